"""What the commands (``python -m server``, ``... predict-dataset``) share: every setting as a
flag, and the settings and the models they name checked before anything starts."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from server.modeldir import ModelDirError, load_model_dir
from server.repository import repository_for, served_names
from server.settings import Settings


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """Every setting as a ``--flag`` (``max_batch`` -> ``--max-batch``), default unset."""
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag, dest=name, default=None, help=f"{field.description} (ASE_{name.upper()})"
        )


def checked_settings(args: argparse.Namespace) -> Settings | None:
    """The settings (flags over ``ASE_*``) and their models, checked, with logging set up;
    ``None``, after saying why on stderr, when either is bad."""
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
        check_models(settings)
    except ModelDirError as error:
        print(f"error: cannot serve: {error}", file=sys.stderr)
        return None
    return settings


def check_models(settings: Settings) -> None:
    """A lone ``--model-dir`` must load; a repository must exist, hold the models ``models``
    names (and, in control mode none, at least one), and ``default_model`` among them.
    The repository's models themselves are checked as they load (a broken one: the index)."""
    repository = repository_for(settings)
    if settings.model_dir is not None:
        load_model_dir(settings.model_dir)
    elif not repository.root.is_dir():
        raise ModelDirError(
            f"model repository {repository.root} does not exist (set --model-repository)"
        )
    found = repository.scan()
    missing = [name for name in settings.model_names or [] if name not in found]
    names = served_names(settings, found)
    if missing or (not names and settings.model_control_mode == "none"):
        raise ModelDirError(
            f"model repository {repository.describe()} holds {', '.join(found) or 'no model'}"
            f"{f', not {missing}' if missing else ''} (its layout: <name>/<version>/, each a "
            "model directory)"
        )
    if settings.default_model and settings.default_model not in (
        found if settings.model_control_mode == "explicit" else names
    ):
        raise ModelDirError(
            f"default model {settings.default_model!r} is not served; the repository "
            f"{repository.describe()} serves {', '.join(names) or 'none'}"
        )
