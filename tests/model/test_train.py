"""Training: the loss falls, stages train what they should, resume is exact, DDP on gloo runs,
and bad inputs fail with errors that name the problem. Tiny configs: seconds on 2 cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint
from model.data import SyntheticScenes
from model.data.mixed import FULL_VIEW
from model.data.sampling import StepBatches
from model.data.transforms import MultiTaskDataset, collate
from model.distill import vit_weights
from model.distributed import Processes
from model.model import ASEModel
from model.presets import DataConfig, StageConfig, TrainConfig, preset, with_adapters
from model.stages import base_parameter_names, learning_rate, make_optimizer, set_stage
from model.train import _parser, config_from_args
from model.trainer import train, training_step

REPO = Path(__file__).resolve().parents[2]


def _tiny(**changes) -> TrainConfig:
    return replace(preset("tiny"), **changes)


def _batch(config: TrainConfig, size: int = 4):
    source = SyntheticScenes(config.model.backbone.image_size, size, seed=3)
    return collate([MultiTaskDataset(source, tasks=config.model.tasks)[i] for i in range(size)])


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stage", ["single_task", "multi_task"])
def test_a_few_steps_reduce_the_loss(stage):
    config = _tiny()
    torch.manual_seed(0)
    model = ASEModel(config.model).train()
    set_stage(model, stage, base_parameter_names(model), "semseg")
    optimizer = make_optimizer(model, weight_decay=0.0)
    for group in optimizer.param_groups:
        group["lr"] = 3e-3
    tasks = ("semseg",) if stage == "single_task" else config.model.tasks
    images, targets = _batch(config)
    losses = []
    for _ in range(12):  # the same batch: the loss must go down
        loss, _ = training_step(model, images, targets, tasks, torch.autocast("cpu", enabled=False))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses


def test_stages_train_disjoint_parameter_sets():
    model = ASEModel(_tiny().model)
    base = base_parameter_names(model)
    single = set(set_stage(model, "single_task", base, "parts"))
    multi = set(set_stage(model, "multi_task", base, "parts"))
    assert base and base <= single and not base & multi
    assert single - base == {n for n, _ in model.named_parameters() if n.startswith("heads.parts.")}
    assert any(".router." in n for n in multi) and any(".experts." in n for n in multi)
    assert "backbone.task_embed" in multi and "backbone.pos_embed" in single


def test_multi_task_step_gives_every_trainable_parameter_a_gradient():
    config = _tiny()
    model = ASEModel(config.model).train()
    for name, parameter in model.named_parameters():  # B starts at 0: make A's gradient non-zero
        if name.endswith(".B"):
            parameter.data.normal_(0, 0.1)
    trainable = set_stage(model, "multi_task", base_parameter_names(model), "semseg")
    images, targets = _batch(config)
    loss, _ = training_step(model, images, targets, config.model.tasks, torch.autocast("cpu"))
    loss.backward()
    parameters = dict(model.named_parameters())
    missing = [n for n in trainable if parameters[n].grad is None or not parameters[n].grad.any()]
    assert not missing


def test_step_batches_are_a_function_of_the_step():
    one = Processes()
    whole = list(StepBatches(10, 4, 0, 6, seed=1, processes=one, shuffle=True))
    resumed = list(StepBatches(10, 4, 3, 6, seed=1, processes=one, shuffle=True))
    assert resumed == whole[3:]
    epoch = [i for batch in whole for i in batch][:10]
    assert sorted(epoch) == list(range(10))  # each epoch is a permutation
    ranks = [list(StepBatches(100, 2, 0, 3, 0, Processes(r, 2), False)) for r in (0, 1)]
    flat = [i for rank in ranks for batch in rank for i in batch]
    assert len(set(flat)) == len(flat)  # processes never share a sample


def test_learning_rate_warms_up_then_decays():
    stage = StageConfig(steps=100, lr=1.0, warmup=10)
    values = [learning_rate(stage, s) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[9:], values[10:], strict=False))
    assert values[-1] == pytest.approx(0.01, abs=0.01)


def test_resume_continues_from_the_same_step_and_matches_an_uninterrupted_run(tmp_path):
    config = _tiny()
    train(config, tmp_path / "whole")
    train(config, tmp_path / "parts", until=6)
    _, stopped = load_checkpoint(tmp_path / "parts" / "ckpt.pt")
    assert stopped["step"] == 6 and stopped["stage"] == "multi_task" and stopped["optimizer"]
    train(config, tmp_path / "parts", resume=True)
    steps = [r["step"] for r in _log(tmp_path / "parts") if "loss" in r]
    assert steps == [4, 6, 8]  # logged at each stage end and at stop/resume points, no repeat
    whole, payload_whole = load_checkpoint(tmp_path / "whole" / "ckpt.pt")
    resumed, payload_resumed = load_checkpoint(tmp_path / "parts" / "ckpt.pt")
    assert payload_whole["step"] == payload_resumed["step"] == config.total_steps
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert set(payload_resumed["metrics"]) >= {"semseg/mIoU", "normals/mean", "edges/odsF"}


def test_checkpoint_from_another_config_is_refused(tmp_path):
    config = _tiny()
    train(config, tmp_path, until=2)
    other = with_adapters(config, "8/2/0/2", "moe")
    with pytest.raises(ValueError, match=r"another model config.*adapters\.spec"):
        train(other, tmp_path, resume=True)


def test_missing_dataset_root_and_layout_file_are_named(tmp_path):
    pascal = replace(preset("pascal-vit-s"), data=DataConfig("pascal_context", str(tmp_path / "x")))
    with pytest.raises(FileNotFoundError, match="root not found"):
        train(pascal, tmp_path / "run")
    root = tmp_path / "pascal"
    (root / "ImageSets" / "Context").mkdir(parents=True)
    (root / "ImageSets" / "Context" / "train.txt").write_text("2008_000001\n")
    (root / "JPEGImages").mkdir()
    layout = replace(pascal, data=DataConfig("pascal_context", str(root)))
    with pytest.raises(FileNotFoundError, match="missing .*human_parts"):
        train(layout, tmp_path / "run")


def tiny_run(out: Path) -> list[str]:
    """The training CLI's arguments for the tiny preset writing to ``out``."""
    return ["--preset", "tiny", "--out", str(out)]


def test_cli_runs_as_a_module(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "model.train",
            *tiny_run(tmp_path),
            "--single-steps",
            "2",
            "--multi-steps",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_checkpoint(tmp_path / "ckpt.pt")[1]["step"] == 4


def test_cli_overrides_the_photo_mix():
    args = ["--preset", "photo", "--out", "unused", "--data", "/data/photos"]
    config = config_from_args(_parser().parse_args([*args, "--photos-per-batch", "6"]))
    assert (config.data.photos_per_batch, config.batch_size) == (6, 8)
    assert config_from_args(_parser().parse_args(args)).data.photos_per_batch == 4  # the preset's
    with pytest.raises(ValueError, match="more than the batch of 8"):
        config_from_args(_parser().parse_args([*args, "--photos-per-batch", "9"]))
    with pytest.raises(ValueError, match="exactly when the dataset is scenes_and_photos"):
        config_from_args(
            _parser().parse_args([*tiny_run(Path("unused")), "--photos-per-batch", "2"])
        )


@pytest.mark.timeout(120)
def test_two_gloo_processes_train(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "model.train",
            *tiny_run(tmp_path),
        ]
        + ["--device", "cpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [r for r in _log(tmp_path) if "loss" in r]
    assert records and all(r["world"] == 2 for r in records)
    model, payload = load_checkpoint(tmp_path / "ckpt.pt")
    assert payload["step"] == preset("tiny").total_steps
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_pascal_preset_path_trains_on_a_written_tree(tmp_path):
    """The PASCAL loader, the benchmark augmentation and the 21 VOC classes through training."""
    from tests.model import test_data_pascal as written

    root = tmp_path / "PASCAL_MT"
    for folder in written.FOLDERS:
        (root / folder).mkdir(parents=True)
    (root / "ImageSets/Context/train.txt").write_text("2008_000001\n2008_000003\n")
    (root / "ImageSets/Context/val.txt").write_text("2008_000002\n")
    for image_id, person in (("2008_000001", True), ("2008_000002", False), ("2008_000003", True)):
        written._write_image(root, image_id, "VOC12", person=person)
    tiny = preset("tiny")
    config = replace(
        tiny,
        model=replace(tiny.model, dataset="pascal_context"),
        data=DataConfig("pascal_context", str(root), val_size=0, augment="benchmark", workers=0),
    )
    metrics = train(config, tmp_path / "run")
    model, payload = load_checkpoint(tmp_path / "run" / "ckpt.pt")
    assert (
        payload["step"] == config.total_steps and model.heads["semseg"].classify.out_channels == 21
    )
    assert "semseg/IoU" not in metrics  # per-class lists are not flattened into floats
    assert 0.0 <= metrics["semseg/mIoU"] <= 100.0 and metrics["normals/mean"] >= 0.0


def test_init_weights_start_the_single_task_stage_which_still_runs(tmp_path):
    """``--init`` (``model.distill``'s file) loads the base weights and stage 1 runs from them;
    with stage 1's learning rate at 1e-12 they reach the checkpoint as loaded. ``--pretrained``
    with it is refused."""
    config = _tiny()
    torch.manual_seed(7)  # other weights than the trainer's own seeded start
    donor = ASEModel(config.model)
    weights = tmp_path / "vit.pth"
    torch.save(vit_weights(donor, base_parameter_names(donor)), weights)
    still = replace(config, single_task=replace(config.single_task, lr=1e-12))
    train(still, tmp_path / "run", init=weights)
    stages = {r.get("stage") for r in _log(tmp_path / "run") if "loss" in r}
    assert stages == {"single_task", "multi_task"}
    model, _ = load_checkpoint(tmp_path / "run" / "ckpt.pt")
    torch.testing.assert_close(model.backbone.pos_embed, donor.backbone.pos_embed)
    block = "blocks.0.attn.qkv.base.weight"
    torch.testing.assert_close(
        model.backbone.state_dict()[block], donor.backbone.state_dict()[block]
    )
    with pytest.raises(ValueError, match="not both"):
        train(config, tmp_path / "both", pretrained=weights, init=weights)


def test_the_runs_positive_weights_reach_the_loss_and_the_checkpoint(tmp_path):
    default = _tiny()
    plain = _tiny(positive_weights={"edges": 0.95, "saliency": 0.5})
    train(default, tmp_path / "default")
    train(plain, tmp_path / "plain")
    a, _ = load_checkpoint(tmp_path / "default" / "ckpt.pt")
    b, payload = load_checkpoint(tmp_path / "plain" / "ckpt.pt")
    saliency_head = {k: v for k, v in a.state_dict().items() if k.startswith("heads.saliency")}
    assert saliency_head and any(
        not torch.equal(v, b.state_dict()[k]) for k, v in saliency_head.items()
    )
    assert TrainConfig.from_dict(payload["train"]) == plain


def test_positive_weights_are_checked_and_old_runs_keep_the_benchmarks():
    with pytest.raises(ValueError, match="^positive_weights: 'semseg' is not a probability"):
        _tiny(positive_weights={"semseg": 0.5})
    with pytest.raises(ValueError, match=r"^positive_weights: saliency: expected .* \(0, 1\)"):
        _tiny(positive_weights={"saliency": 1.0})
    saved = _tiny().to_dict()
    del saved["positive_weights"]  # a checkpoint written before the field existed
    assert TrainConfig.from_dict(saved).positive_weights == {"edges": 0.95}


def test_cli_sets_and_clears_a_positive_weight():
    args = ["--preset", "photo", "--out", "unused", "--data", "/data/photos"]

    def weights(*extra):
        return config_from_args(_parser().parse_args([*args, *extra])).positive_weights

    assert weights() == {"edges": 0.95}  # the preset's: the benchmark recipe's
    assert weights("--positive-weight", "saliency=0.5") == {"edges": 0.95, "saliency": 0.5}
    assert weights("--positive-weight", "edges=balanced") == {}
    both = weights("--positive-weight", "saliency=0.3", "--positive-weight", "edges=0.9")
    assert both == {"edges": 0.9, "saliency": 0.3}
    with pytest.raises(ValueError, match="expected a number or 'balanced', got 'half'"):
        weights("--positive-weight", "saliency=half")
    with pytest.raises(ValueError, match="expected TASK=W"):
        weights("--positive-weight", "saliency")
    with pytest.raises(ValueError, match="'normals' is not a probability task"):
        weights("--positive-weight", "normals=0.5")


def test_cli_pastes_people_and_labels_nobodys_parts_on_photo_presets():
    args = ["--preset", "photo", "--out", "unused", "--data", "/data/photos"]

    def data(*extra):
        return config_from_args(_parser().parse_args([*args, *extra])).data

    preset = data()
    changed = data("--paste-people", "0.3", "--nobody-parts")
    assert (changed.paste_people, changed.nobody_parts) == (0.3, True)
    earlier = data("--paste-people", "0", "--no-nobody-parts")  # the recipe before pasting
    assert (earlier.paste_people, earlier.nobody_parts) == (0.0, False)
    unchanged = replace(changed, paste_people=preset.paste_people, nobody_parts=preset.nobody_parts)
    assert unchanged == preset
    with pytest.raises(ValueError, match=r"^data.paste_people: a share in \[0, 1\], got 1.5"):
        data("--paste-people", "1.5")
    with pytest.raises(ValueError, match="need the scenes_and_photos dataset"):
        config_from_args(_parser().parse_args([*tiny_run(Path("unused")), "--nobody-parts"]))
    saved = dict(preset.__dict__)
    for field in ("paste_people", "nobody_parts"):  # a checkpoint written before the fields
        del saved[field]
    assert DataConfig(**saved) == replace(preset, paste_people=0.0, nobody_parts=False)


@pytest.mark.parametrize(
    ("flag", "name", "in_preset", "default", "bad"),
    [
        ("--grey-photos", "grey_photos", 0.0, 0.0, "-0.1"),
        ("--full-views", "full_views", 0.5, FULL_VIEW, "1.5"),
    ],
)
def test_cli_sets_a_share_of_the_photo_crops(flag, name, in_preset, default, bad):
    args = ["--preset", "photo", "--out", "unused", "--data", "/data/photos"]

    def data(*extra):
        return config_from_args(_parser().parse_args([*args, *extra])).data

    assert getattr(data(), name) == in_preset
    assert data(flag, "0.75") == replace(data(), **{name: 0.75})
    with pytest.raises(ValueError, match=rf"^data.{name}: a share in \[0, 1\], got {bad}"):
        data(flag, bad)
    with pytest.raises(ValueError, match="need the scenes_and_photos dataset"):
        config_from_args(_parser().parse_args([*tiny_run(Path("unused")), flag, "0.5"]))
    saved = dict(data().__dict__)
    del saved[name]  # a checkpoint written before the field
    assert getattr(DataConfig(**saved), name) == default


def test_cli_trains_saliency_on_the_teachers_probability():
    args = ["--preset", "photo", "--out", "unused", "--data", "/data/photos"]

    def data(*extra):
        return config_from_args(_parser().parse_args([*args, *extra])).data

    assert data().soft_saliency is True  # the served recipe
    assert data("--no-soft-saliency") == replace(data(), soft_saliency=False)
    assert data("--no-soft-saliency", "--soft-saliency") == data()
    with pytest.raises(ValueError, match="soft_saliency and full_views need the scenes_and"):
        config_from_args(_parser().parse_args([*tiny_run(Path("unused")), "--soft-saliency"]))
    saved = dict(data().__dict__)
    del saved["soft_saliency"]  # a checkpoint written before the field trained the hard label
    assert DataConfig(**saved) == data("--no-soft-saliency")


def test_cli_tunes_the_hybrids_last_cnn_stages():
    args = ["--preset", "photo", "--out", "unused", "--data", "/data/photos"]

    def config(*extra):
        return config_from_args(_parser().parse_args([*args, *extra]))

    assert config().tuned_cnn_stages == 0
    assert config("--tune-cnn", "2") == replace(config(), tuned_cnn_stages=2)
    with pytest.raises(ValueError, match="expected 0-5 stages"):
        config("--tune-cnn", "6")
    with pytest.raises(ValueError, match="only a hybrid backbone"):
        config_from_args(_parser().parse_args([*tiny_run(Path("unused")), "--tune-cnn", "1"]))
    saved = config().to_dict()
    for field in ("tuned_cnn_stages", "cnn_lr_scale"):  # a checkpoint written before them
        del saved[field]
    assert TrainConfig.from_dict(saved) == config()
