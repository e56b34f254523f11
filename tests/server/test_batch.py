"""``python -m server predict-dataset`` without Ray (server/batch.py, server/batch_cli.py): the
maps are the server's answers pixel for pixel, a corrupt image is reported and skipped, a rerun
skips what is complete and redoes what is not. The run on a Ray cluster is in
tests/server/test_ray_cluster.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from server.batch_cli import main
from tests.server.conftest import REPO, image_bytes, png_pixels, random_image

TASKS = ("semseg", "parts", "saliency", "normals", "edges")
FLAGS = ("--providers", "cpu", "--threads", "1", "--max-batch", "4", "--log-level", "warning")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Seven images in two folders (PNG and JPEG, two sizes) and a truncated PNG."""
    folder = tmp_path_factory.mktemp("images")
    (folder / "sub").mkdir()
    for seed in range(7):
        fmt, suffix = ("JPEG", "jpg") if seed % 2 else ("PNG", "png")
        size = (40, 56) if seed < 4 else (33, 47)
        target = folder / ("sub" if seed % 3 == 0 else "") / f"img{seed}.{suffix}"
        target.write_bytes(image_bytes(random_image(seed, *size), fmt))
    (folder / "broken.png").write_bytes(image_bytes(random_image(50))[:150])
    return folder


def run(model_dir: Path, *args: str) -> int:
    return main(["--model-dir", str(model_dir), *FLAGS, *map(str, args)])  # args win


def files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def served(server, body: bytes, **params) -> httpx.Response:
    response = httpx.post(
        f"{server.url}/predict",
        params=params,
        content=body,
        timeout=30,
        headers={"content-type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    return response


def test_command_writes_the_servers_maps_and_reports_the_corrupt_image(
    model_dir, server, images, tmp_path
):
    command = [
        sys.executable,
        "-m",
        "server",
        "predict-dataset",
        str(images),
        str(tmp_path / "out"),
        "--model-dir",
        str(model_dir),
        *FLAGS,
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr  # one image failed; the others are written
    assert "8 images: 7 written, 0 skipped (already there), 1 failed" in result.stdout
    assert "images/s" in result.stdout
    assert "failed: broken.png: invalid_image" in result.stderr
    written = files(tmp_path / "out")
    assert len(written) == 7 * len(TASKS)
    for source in sorted(images.rglob("img*")):
        name = source.relative_to(images).as_posix()
        answer = served(server, source.read_bytes()).json()  # all tasks, base64 PNGs
        for task in TASKS:
            pixels = png_pixels(answer["tasks"][task]["data"])
            assert np.array_equal(png_pixels(written[f"{name}.{task}.png"]), pixels)
        single = served(server, source.read_bytes(), tasks="normals", format="png")
        assert np.array_equal(
            png_pixels(written[f"{name}.normals.png"]), png_pixels(single.content)
        )


def test_npz_equals_the_servers_npz_for_the_chosen_tasks(model_dir, server, images, tmp_path):
    """One image per model call, as the server's lone requests: ONNX Runtime's float32 normals
    move by ~1e-6 with the batch's size (the uint8 maps above do not)."""
    npz = ("--format", "npz", "--tasks", "normals,semseg", "--max-batch", "1")
    assert run(model_dir, images, tmp_path, *npz) == 1
    for source in sorted(images.rglob("img*")):
        name = source.relative_to(images).as_posix()
        answer = served(server, source.read_bytes(), tasks="semseg,normals", format="npz")
        assert (tmp_path / f"{name}.npz").read_bytes() == answer.content


def test_rerun_skips_complete_images_and_redoes_incomplete_ones(
    model_dir, images, tmp_path, capsys
):
    output = tmp_path / "out"
    assert run(model_dir, images, output, "--tasks", "semseg,edges") == 1
    first = files(output)
    (output / "img2.png.edges.png").unlink()  # a run stopped between an image's two files
    (output / ".img2.png.edges.png.123.part").write_bytes(b"half a file")  # and mid-write
    capsys.readouterr()
    assert run(model_dir, images, output, "--tasks", "semseg,edges") == 1
    assert "1 written, 6 skipped (already there), 1 failed" in capsys.readouterr().out
    assert {k: v for k, v in files(output).items() if not k.endswith(".part")} == first


def test_a_list_file_names_the_images(model_dir, images, tmp_path, capsys):
    listing = images / "some.txt"
    listing.write_text("# two of them\nimg1.jpg\n\nsub/img3.jpg\n")
    try:
        assert run(model_dir, listing, tmp_path, "--tasks", "saliency") == 0
    finally:
        listing.unlink()
    assert sorted(files(tmp_path)) == ["img1.jpg.saliency.png", "sub/img3.jpg.saliency.png"]
    assert "2 images: 2 written" in capsys.readouterr().out


def test_unknown_task_stops_before_any_image(model_dir, images, tmp_path, capsys):
    assert run(model_dir, images, tmp_path / "out", "--tasks", "semseg,depth") == 2
    assert "unknown task(s) ['depth']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_model_flag_picks_the_repository_model_that_runs(model_dir, images, tmp_path, capsys):
    """A repository of the tiny model and two versions of a fake one: ``--model`` and
    ``--model-version`` choose which writes the maps (default: the first model by name, its
    newest version), each run's maps those of a run on that model directory alone."""
    from tests.server.fake_model import write_fake_model_dir

    repo = tmp_path / "repo"
    (repo / "tiny").mkdir(parents=True)
    (repo / "tiny" / "1").symlink_to(model_dir)
    fakes = [write_fake_model_dir(repo / "fake" / v, seed=int(v)) for v in ("1", "2")]
    flags = ("--model-repository", str(repo), "--tasks", "semseg")

    def maps(*pick: str, alone: Path | None = None) -> dict[str, bytes]:
        name = f"alone-{alone.parent.name}-{alone.name}" if alone else "-".join(pick)
        out = tmp_path / (name or "default")
        args = ("--model-dir", str(alone), "--tasks", "semseg") if alone else (*flags, *pick)
        assert main([str(images), str(out), *FLAGS, *args]) == 1  # broken.png fails in each
        return files(out)

    assert maps("--model", "tiny") == maps(alone=model_dir)
    assert maps("--model", "fake", "--model-version", "1") == maps(alone=fakes[0])
    newest = maps("--model", "fake")
    assert newest == maps(alone=fakes[1]) == maps()
    assert newest != maps(alone=fakes[0])
    capsys.readouterr()
    assert main([str(images), str(tmp_path / "none"), *FLAGS, *flags, "--model", "nope"]) == 2
    assert "no model 'nope' in the repository" in capsys.readouterr().err
