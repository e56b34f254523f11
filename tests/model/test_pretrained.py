"""timm-format ViT weights load into the frozen backbone, with position-embedding resize."""

import pytest
import torch
import torch.nn.functional as F

from model.model import ASEModel
from model.pretrained import load_timm_vit, resize_pos_embed
from tests.model.tiny import tiny_config

WIDTH, DEPTH, FILE_GRID = 32, 2, 3  # the file's model saw 3x3 patches; ours has 4x4


def timm_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with timm ViT key names and shapes (class token, head included)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    state = {
        "cls_token": rand(1, 1, WIDTH),
        "pos_embed": rand(1, 1 + FILE_GRID**2, WIDTH),
        "patch_embed.proj.weight": rand(WIDTH, 3, 8, 8),
        "patch_embed.proj.bias": rand(WIDTH),
        "norm.weight": rand(WIDTH),
        "norm.bias": rand(WIDTH),
        "head.weight": rand(10, WIDTH),
        "head.bias": rand(10),
    }
    shapes = {
        "norm1.weight": (WIDTH,),
        "norm1.bias": (WIDTH,),
        "attn.qkv.weight": (3 * WIDTH, WIDTH),
        "attn.qkv.bias": (3 * WIDTH,),
        "attn.proj.weight": (WIDTH, WIDTH),
        "attn.proj.bias": (WIDTH,),
        "norm2.weight": (WIDTH,),
        "norm2.bias": (WIDTH,),
        "mlp.fc1.weight": (4 * WIDTH, WIDTH),
        "mlp.fc1.bias": (4 * WIDTH,),
        "mlp.fc2.weight": (WIDTH, 4 * WIDTH),
        "mlp.fc2.bias": (WIDTH,),
    }
    for block in range(DEPTH):
        for name, shape in shapes.items():
            state[f"blocks.{block}.{name}"] = rand(*shape)
    return state


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_loads_timm_weights_and_resizes_pos_embed(tmp_path, lora_rank):
    source = timm_state_dict()
    del source["blocks.1.mlp.fc2.bias"]  # a missing key must be reported, not invented
    path = tmp_path / "vit.pth"
    torch.save({"model": source}, path)
    model = ASEModel(tiny_config("ase", lora_rank=lora_rank))
    backbone = model.backbone
    report = load_timm_vit(backbone, path)
    base = ".base" if lora_rank else ""
    qkv = backbone.blocks[1].attn.qkv
    assert torch.equal(
        qkv.base.weight if lora_rank else qkv.weight, source["blocks.1.attn.qkv.weight"]
    )
    assert torch.equal(backbone.patch_embed.proj.weight, source["patch_embed.proj.weight"])
    assert torch.equal(backbone.norm.bias, source["norm.bias"])
    assert report.missing == (f"blocks.1.mlp.fc2{base}.bias",)
    assert set(report.unexpected) == {"cls_token", "head.weight", "head.bias"}
    assert report.pos_embed_grid == (FILE_GRID, 4)
    grid = source["pos_embed"][:, 1:].reshape(1, 3, 3, WIDTH).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
    torch.testing.assert_close(
        backbone.pos_embed, expected.permute(0, 2, 3, 1).reshape(1, 16, WIDTH)
    )
    assert not backbone.pos_embed.requires_grad and backbone.task_embed.requires_grad
    with pytest.raises(ValueError, match="missing backbone weights"):
        load_timm_vit(backbone, path, strict=True)


def test_same_grid_only_drops_the_class_token():
    pos = torch.randn(1, 1 + 16, WIDTH)
    resized, file_grid = resize_pos_embed(pos, 4)
    assert file_grid == 4 and torch.equal(resized, pos[:, 1:])


def test_shape_mismatch_and_missing_file_are_named(tmp_path):
    source = timm_state_dict()
    source["blocks.0.attn.proj.weight"] = torch.randn(WIDTH, WIDTH + 1)
    torch.save(source, tmp_path / "bad.pth")
    backbone = ASEModel(tiny_config("none")).backbone
    with pytest.raises(ValueError, match=r"blocks.0.attn.proj.weight has shape \(32, 33\)"):
        load_timm_vit(backbone, tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError):
        load_timm_vit(backbone, tmp_path / "absent.pth")
