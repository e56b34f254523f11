"""The photo ablation's protocol on a tiny hybrid model and a photo tree written here."""

import argparse

import pytest

from bench.ablation_photos import PAIR, _scored_rows, main


def test_rows_start_from_the_checkpoints_frozen_base_and_compare_per_seed(
    tmp_path, photo_checkpoint
):
    checkpoint, root = photo_checkpoint
    out = tmp_path / "ablation"
    argv = [str(checkpoint), "--data", str(root), "--out", str(out), "--seeds", "0", "1"]
    report = main([*argv, "--steps", "2", "--scenes", "2"])
    summary = report["summary"]
    assert summary["seeds"] == ["0", "1"]
    assert set(summary["summary"]) == {"lora", "moe 16/4/0/4", "ase 16/3/1/4"}
    for seed in ("0", "1"):
        assert summary["delta_m"][seed]["lora"] == 0.0  # the reference of its own seed
        rows = report["per_seed"][seed]
        assert set(rows["ase 16/3/1/4"]) == {
            "saliency_maxF",
            "edge_F",
            "person_IoU",
            "semseg",
            "parts",
            "normals",
        }
    assert (out / "ablation.md").read_text().startswith("Mean ± std over seeds 0, 1")


def _run(checkpoint, root, out, *extra: str) -> dict:
    argv = [str(checkpoint), "--data", str(root), "--out", str(out), "--steps", "2"]
    return main([*argv, "--scenes", "2", *extra])


def test_rows_side_by_side_score_exactly_as_rows_one_after_another(tmp_path, photo_checkpoint):
    checkpoint, root = photo_checkpoint
    alone = _run(checkpoint, root, tmp_path / "alone", "--seeds", "0", "1")
    side_by_side = _run(checkpoint, root, tmp_path / "jobs", "--seeds", "0", "1", "--jobs", "3")
    assert side_by_side["per_seed"] == alone["per_seed"]
    assert side_by_side["summary"] == alone["summary"]
    assert side_by_side["summary"]["seeds"] == ["0", "1"]  # in seed order, whichever ends first


def test_without_a_lora_row_there_is_no_delta_m_but_ase_minus_moe_stays(tmp_path, photo_checkpoint):
    checkpoint, root = photo_checkpoint
    out = tmp_path / "pair"
    report = _run(checkpoint, root, out, "--seeds", "0", "--variants", *PAIR)
    summary = report["summary"]
    assert summary["delta_m"] == {}
    assert summary["summary"]["ase 16/3/1/4"]["delta_m"] == {"mean": None, "std": None}
    rows = report["per_seed"]["0"]
    difference = summary["ase_minus_moe"]["0"]
    assert set(difference) == set(rows["ase 16/3/1/4"])  # every metric, no Δm
    assert difference["edge_F"] == rows["ase 16/3/1/4"]["edge_F"] - rows["moe 16/4/0/4"]["edge_F"]
    table = (out / "ablation.md").read_text()
    assert "no lora row, so no Δm" in table
    assert table.splitlines()[-1].endswith("| - |")  # seed 0's difference, Δm cell empty


def test_a_single_variant_has_no_ase_minus_moe_table(tmp_path, photo_checkpoint):
    checkpoint, root = photo_checkpoint
    out = tmp_path / "lora"
    report = _run(checkpoint, root, out, "--seeds", "0", "--variants", "lora")
    assert report["summary"]["ase_minus_moe"] == {}
    assert report["summary"]["delta_m"] == {"0": {"lora": 0.0}}
    assert "minus" not in (out / "ablation.md").read_text()


@pytest.mark.parametrize("jobs", ["0", "-2", "two"])
def test_jobs_must_be_a_positive_count(tmp_path, photo_checkpoint, capsys, jobs):
    checkpoint, root = photo_checkpoint
    with pytest.raises(SystemExit):
        _run(checkpoint, root, tmp_path / "x", "--jobs", jobs)
    assert "--jobs" in capsys.readouterr().err


def row_that_fails_for_lora(args, seed: int, name: str) -> dict[str, float]:
    """A stand-in for score_row, run in the pool's spawned processes (importable from here)."""
    if name == "lora":
        raise ValueError("out of memory, say")
    return {"seed": float(seed)}


def test_a_failed_row_side_by_side_lets_the_others_finish_and_is_then_raised(tmp_path):
    pending = [("0", "lora"), ("0", "ase 16/3/1/4"), ("1", "lora"), ("1", "moe 16/4/0/4")]
    args = argparse.Namespace(jobs=2)
    finished = []
    with pytest.raises(RuntimeError, match="2 of 4 rows failed") as failure:
        for row in _scored_rows(args, pending, work=row_that_fails_for_lora):
            finished.append(row)
    assert sorted(finished) == [
        ("0", "ase 16/3/1/4", {"seed": 0.0}),
        ("1", "moe 16/4/0/4", {"seed": 1.0}),
    ]
    assert "seed 0 lora: ValueError: out of memory, say" in str(failure.value)
    assert "seed 1 lora" in str(failure.value)
