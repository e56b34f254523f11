"""What the commands (``python -m server``, ``... predict-dataset``) share: every setting as a
flag, and the settings and model directory checked before anything starts."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from server.modeldir import ModelDirError, load_model_dir
from server.settings import Settings


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """Every setting as a ``--flag`` (``max_batch`` -> ``--max-batch``), default unset."""
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag, dest=name, default=None, help=f"{field.description} (ASE_{name.upper()})"
        )


def checked_settings(args: argparse.Namespace) -> Settings | None:
    """The settings (flags over ``ASE_*``) and their model directory, checked, with logging set
    up; ``None``, after saying why on stderr, when either is bad."""
    flags = {
        name: value
        for name in Settings.model_fields
        if (value := getattr(args, name, None)) is not None
    }
    try:
        settings = Settings(**flags)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        print(f"error: bad setting: {problems}", file=sys.stderr)
        return None
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        load_model_dir(settings.model_dir)
    except ModelDirError as error:
        print(f"error: cannot serve: {error}", file=sys.stderr)
        return None
    return settings
