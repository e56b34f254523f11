"""The photo ablation's protocol on a tiny hybrid model and a photo tree written here."""

from dataclasses import replace

from bench.ablation_photos import main
from model.checkpoint import save_checkpoint
from model.presets import tiny
from model.tasks import SCENES_AND_PHOTOS
from model.trainer import new_model
from tests.model.photo_tree import mixed_data, write_photo_tree


def test_rows_start_from_the_checkpoints_frozen_base_and_compare_per_seed(tmp_path):
    root = write_photo_tree(tmp_path / "photos")
    config = tiny()
    backbone = replace(config.model.backbone, patch_size=16, embed="efficientnet_lite0")
    model = replace(config.model, backbone=backbone, dataset=SCENES_AND_PHOTOS)
    data = mixed_data(root)
    config = replace(config, model=model, data=data)
    network = new_model(config, None)
    checkpoint = save_checkpoint(
        tmp_path / "ckpt.pt", network, extra={"train": config.to_dict(), "stage": "multi_task"}
    )
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
