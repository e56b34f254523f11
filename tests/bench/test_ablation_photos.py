"""The photo ablation's protocol on a tiny hybrid model and a photo tree written here."""

from bench.ablation_photos import main


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
