"""The command line: errors name the problem and exit non-zero; a script-mode export from the
repository root with --check passes and is byte-identical to an in-process export."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from export.to_onnx import main
from tests.export.tiny_export import checkpoint_of, write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def run_main(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse rejects unknown choices this way
        code = exit_.code
    return code, capsys.readouterr().err


def test_missing_checkpoint(tmp_path, capsys):
    code, err = run_main(capsys, tmp_path / "nope.pt", "-o", tmp_path / "out")
    assert code != 0 and "no checkpoint" in err and "nope.pt" in err
    assert not (tmp_path / "out").exists()


def test_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file at all")
    code, err = run_main(capsys, bad, "-o", tmp_path / "out")
    assert code != 0 and "not a checkpoint" in err and "bad.pt" in err


def test_checkpoint_without_config(tmp_path, capsys):
    path = tmp_path / "noconfig.pt"
    torch.save({"format_version": 1, "model": {}}, path)
    code, err = run_main(capsys, path, "-o", tmp_path / "out")
    assert code != 0 and "no config" in err


@pytest.mark.parametrize(
    ("options", "message"),
    [(["--dispatch", "fastest"], "invalid choice: 'fastest'"), (["--int4"], "unrecognized")],
)
def test_unsupported_option(tmp_path, capsys, options, message):
    code, err = run_main(capsys, tmp_path / "ckpt.pt", *options)
    assert code != 0 and message in err


def test_sparse_dispatch_without_an_expert_bank(tmp_path, capsys):
    checkpoint = write_tiny_checkpoint(tmp_path / "lora.pt", "lora")
    code, err = run_main(capsys, checkpoint, "-o", tmp_path / "out", "--dispatch", "sparse")
    assert code != 0 and "expert bank" in err and "lora" in err
    assert not (tmp_path / "out").exists()


def test_script_mode_check_and_determinism(ase_dir, tmp_path):
    """Same checkpoint, another process, another directory: identical bytes everywhere."""
    out = tmp_path / "again"
    command = [
        sys.executable,
        "export/to_onnx.py",
        checkpoint_of(ase_dir),
        "-o",
        out,
        "--check",
        "--name",
        "ase-tiny",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "FAIL" not in done.stdout and done.stdout.count(": ok") == 8  # 2 graphs x 4 cases
    files = sorted(p.name for p in ase_dir.iterdir())
    assert files == ["metadata.json", "model.dense.onnx", "model.sparse.onnx"]
    assert sorted(p.name for p in out.iterdir()) == files
    for name in files:
        assert (out / name).read_bytes() == (ase_dir / name).read_bytes(), name
