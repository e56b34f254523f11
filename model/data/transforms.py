"""Augmentations on ``Sample`` (NumPy) and the torch adapter that batches them.

Training (the benchmark recipe): random scale 0.5-2, random crop / pad to the output size
(labels padded with 255, normals with invalid, the image with the ImageNet mean so it
normalises to 0), horizontal flip (negating the x of normals), photometric distortion on the
image only. Evaluation, two protocols: at each image's original size (the benchmark's: only
the image is resized to the model's input, ``OriginalSizeDataset``, and predictions go back
with ``restore_size``, as the server does) or at the model's size (``EvalTransform``: nearest
for labels, bilinear for normals followed by renormalisation). Normalisation with ImageNet
mean/std happens when a sample becomes tensors (``to_tensors``), so every transform sees
uint8 RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from export.contract import IMAGENET_MEAN, IMAGENET_STD  # the graphs' input normalisation
from model.data import NORMALS_VALID
from model.data.sample import Sample
from model.tasks import IGNORE_INDEX, TASK_NAMES, TASKS

_LABELS = ("semseg", "parts", "saliency", "edges", "normals_valid")  # resized nearest


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


# ---------------------------------------------------------------- resizing


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes (pixel centres aligned)."""
    height, width = array.shape[:2]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * height / size[0]).astype(int), height - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * width / size[1]).astype(int), width - 1)
    return array[rows[:, None], cols[None, :]]


def resize_bilinear(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of the first two axes to float32 (pixel centres aligned, no antialias)."""

    def taps(out: int, length: int):
        source = np.clip((np.arange(out) + 0.5) * length / out - 0.5, 0, length - 1)
        low = np.minimum(source.astype(int), length - 1)
        high = np.minimum(low + 1, length - 1)
        return low, high, (source - low).astype(np.float32)

    r0, r1, fr = taps(size[0], array.shape[0])
    c0, c1, fc = taps(size[1], array.shape[1])
    values = array.astype(np.float32)
    extra = (None,) * (array.ndim - 2)  # broadcast the weights over channels
    fc = fc[(None, slice(None), *extra)]
    top = values[r0][:, c0] * (1 - fc) + values[r0][:, c1] * fc
    bottom = values[r1][:, c0] * (1 - fc) + values[r1][:, c1] * fc
    fr = fr[(slice(None), None, *extra)]
    return top * (1 - fr) + bottom * fr


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> ``size`` (height, width), PIL bilinear as the server's preprocessing.
    PIL's bilinear filter widens its support when shrinking: no aliasing on big downscales."""
    if image.shape[:2] == size:
        return image
    return np.asarray(Image.fromarray(image).resize(size[::-1], Image.Resampling.BILINEAR))


def restore_size(kind: str, prediction: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A prediction at model size -> ``size`` (height, width), by the server's rules
    (``server/runtime.py``): ``classes`` ids (h, w) nearest (a label never blends into
    another); ``probability`` (h, w) bilinear, clipped to [0, 1]; ``vector`` (3, h, w)
    bilinear per channel, then renormalised."""
    same_size = prediction.shape[-2:] == size
    if kind == "classes":
        if same_size:
            return prediction
        image = Image.fromarray(prediction.astype(np.uint8))
        return np.asarray(image.resize(size[::-1], Image.Resampling.NEAREST))
    planes = prediction[None] if kind == "probability" else prediction  # (C, h, w)
    resized = planes if same_size else np.stack([_resize_plane(p, size) for p in planes])
    if kind == "probability":
        return np.clip(resized[0], 0.0, 1.0)
    return resized / np.maximum(np.linalg.norm(resized, axis=0, keepdims=True), 1e-6)


def _resize_plane(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))  # mode "F"
    return np.asarray(image.resize(size[::-1], Image.Resampling.BILINEAR), dtype=np.float32)


def resize_sample(sample: Sample, size: tuple[int, int], smooth_normals: bool) -> Sample:
    """Image bilinear (antialiased), labels nearest; normals bilinear + renormalised, or nearest."""
    image = resize_image(sample.image, size)
    labels = {name: resize_nearest(getattr(sample, name), size) for name in _LABELS}
    if smooth_normals:
        normals = resize_bilinear(sample.normals, size)  # invalid pixels are 0: they only shrink
        length = np.linalg.norm(normals, axis=2)
        labels["normals_valid"] &= length > 1e-6
        normals = np.where(labels["normals_valid"][..., None], normals, 0.0)
        normals = normals / np.maximum(length, 1e-6)[..., None]
    else:
        normals = resize_nearest(sample.normals, size)
    return replace(sample, image=image, normals=normals.astype(np.float32), **labels)


# ---------------------------------------------------------------- training augmentations


def _pad_value(name: str):
    return {
        "image": np.round(np.array(IMAGENET_MEAN) * 255).astype(np.uint8),
        "normals": 0.0,
        "normals_valid": False,
    }.get(name, IGNORE_INDEX)


def crop_or_pad(sample: Sample, size: tuple[int, int], rng: np.random.Generator) -> Sample:
    """A random window of ``size``; where the sample is smaller, pad (labels with 255)."""
    height, width = sample.size
    top = int(rng.integers(0, max(height - size[0], 0) + 1))
    left = int(rng.integers(0, max(width - size[1], 0) + 1))

    def window(name: str, array: np.ndarray) -> np.ndarray:
        out = np.empty((*size, *array.shape[2:]), dtype=array.dtype)
        out[...] = _pad_value(name)
        part = array[top : top + size[0], left : left + size[1]]
        out[: part.shape[0], : part.shape[1]] = part
        return out

    return sample.map_arrays(window)


def horizontal_flip(sample: Sample) -> Sample:
    """Mirror left-right; a normal's x component changes sign."""
    flipped = sample.map_arrays(lambda name, a: a[:, ::-1].copy())
    normals = flipped.normals.copy()
    normals[..., 0] *= -1.0
    normals[~flipped.normals_valid] = 0.0  # keep invalid vectors exactly zero (no -0.0 noise)
    return replace(flipped, normals=normals)


LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, what PIL's "L" uses


def greyscale(image: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 image as a black-and-white photo: its luma in all three channels."""
    luma = (image.astype(np.float32) @ LUMA + 0.5).astype(np.uint8)
    return np.repeat(luma[..., None], 3, axis=-1)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast, saturation and hue on an (H, W, 3) uint8 image."""
    pixels = image.astype(np.float32) / 255.0
    pixels = pixels + rng.uniform(-0.125, 0.125)  # brightness
    mean = pixels.mean()
    pixels = (pixels - mean) * rng.uniform(0.5, 1.5) + mean  # contrast
    grey = pixels @ LUMA
    pixels = grey[..., None] + (pixels - grey[..., None]) * rng.uniform(0.5, 1.5)  # saturation
    pixels = _rotate_hue(pixels, rng.uniform(-0.1, 0.1) * 2 * np.pi)
    return (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _rotate_hue(pixels: np.ndarray, angle: float) -> np.ndarray:
    """Rotate colours about the grey axis by ``angle`` radians (a hue shift)."""
    axis = np.full(3, 1 / np.sqrt(3), dtype=np.float32)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = (
        np.cos(angle) * np.eye(3)
        + np.sin(angle) * cross
        + (1 - np.cos(angle)) * np.outer(axis, axis)
    )
    return pixels @ rotation.T.astype(np.float32)


class TrainTransform:
    """Random scale, crop/pad to ``size``, flip, photometric distortion (the benchmark's)."""

    def __init__(
        self,
        size: int | tuple[int, int],
        scale: tuple[float, float] = (0.5, 2.0),
        flip: bool = True,
        photometric: bool = True,
    ) -> None:
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale range must satisfy 0 < low <= high, got {scale}")
        self.size, self.scale = _as_size(size), scale
        self.flip, self.photometric = flip, photometric

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        # Scale relative to the output size, so a random crop sees 0.5x-2x of the content.
        factor = rng.uniform(*self.scale) * max(
            self.size[0] / sample.size[0], self.size[1] / sample.size[1]
        )
        scaled = (max(1, round(sample.size[0] * factor)), max(1, round(sample.size[1] * factor)))
        sample = crop_or_pad(resize_sample(sample, scaled, smooth_normals=False), self.size, rng)
        if self.flip and rng.random() < 0.5:
            sample = horizontal_flip(sample)
        if self.photometric:
            sample = replace(sample, image=photometric_distortion(sample.image, rng))
        return sample


class EvalTransform:
    """Resize to ``size``: bilinear image, nearest labels, bilinear + renormalised normals."""

    def __init__(self, size: int | tuple[int, int]) -> None:
        self.size = _as_size(size)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        if sample.size == self.size:
            return sample
        return resize_sample(sample, self.size, smooth_normals=True)


# ---------------------------------------------------------------- torch adapter


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 normalised with ImageNet mean/std."""
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    normalised = (image.astype(np.float32) / 255.0 - mean) / std  # (H, W, 3)
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))


def to_tensors(sample: Sample, tasks: Sequence[str] = TASK_NAMES) -> dict[str, torch.Tensor]:
    """One sample as tensors: ``image`` (3, H, W) normalised, targets as in the package doc."""
    out = {"image": image_tensor(sample.image)}
    for task in tasks:
        kind = TASKS[task].kind
        label = getattr(sample, task)
        if kind == "classes":
            out[task] = torch.from_numpy(label.astype(np.int64))
        elif kind == "probability":
            out[task] = torch.from_numpy(label.astype(np.float32))  # 0., 1. or 255. (ignore)
        else:
            # Invalid pixels carry 255 in all channels, PASCAL's code, as the losses expect.
            normals = np.where(sample.normals_valid[..., None], label, float(IGNORE_INDEX))
            out[task] = torch.from_numpy(np.ascontiguousarray(normals.transpose(2, 0, 1)))
            out[NORMALS_VALID] = torch.from_numpy(sample.normals_valid.copy())
    return out


def collate(items: Sequence[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, dict]:
    """Stack ``to_tensors`` outputs: ``images`` (B, 3, H, W) and ``targets`` (package doc)."""
    images = torch.stack([item["image"] for item in items])
    keys = [key for key in items[0] if key != "image"]
    return images, {key: torch.stack([item[key] for item in items]) for key in keys}


def collate_eval(items: Sequence[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, dict]:
    """``collate`` for evaluation at original sizes: each target is a stacked tensor when every
    item has the same size, else a list of per-image tensors."""
    images = torch.stack([item["image"] for item in items])
    keys = [key for key in items[0] if key != "image"]
    same = len({tuple(item[keys[0]].shape[-2:]) for item in items}) == 1 if keys else True
    if same:
        return images, {key: torch.stack([item[key] for item in items]) for key in keys}
    return images, {key: [item[key] for item in items] for key in keys}


class OriginalSizeDataset(Dataset):
    """Evaluation at each image's original size: the image resized to the model's input
    ``size`` (PIL bilinear, as the server does), the labels as the source stores them."""

    def __init__(self, source, size: int | tuple[int, int], tasks: Sequence[str]) -> None:
        self.source, self.size, self.tasks = source, _as_size(size), tuple(tasks)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.source[index]
        item = to_tensors(sample, self.tasks)
        item["image"] = image_tensor(resize_image(sample.image, self.size))
        return item


class MultiTaskDataset(Dataset):
    """A torch ``Dataset`` over any ``Sample`` source (``SyntheticScenes``, ``PascalContext``).

    Augmentation randomness comes from torch's generator (one draw per item), so
    ``torch.manual_seed`` makes it reproducible, each epoch differs, and DataLoader workers,
    which torch seeds apart, do not repeat each other.
    """

    def __init__(self, source, transform=None, tasks: Sequence[str] = TASK_NAMES) -> None:
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(TASK_NAMES)}")
        self.source, self.transform, self.tasks = source, transform, tuple(tasks)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.source[index]
        if self.transform is not None:
            seed = int(torch.randint(0, 2**62, (1,)))
            sample = self.transform(sample, np.random.default_rng([seed, index]))
        return to_tensors(sample, self.tasks)
