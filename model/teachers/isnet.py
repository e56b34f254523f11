"""Saliency: ISNet (DIS, MIT-licensed model) from npm ``@imgly/background-removal-data``.

The package (AGPL-3.0; the model inside it is listed as MIT in its ThirdPartyLicenses.json)
stores each ONNX model split into 4 MiB chunks named by their sha256; ``dist/resources.json``
lists a model's chunks in order with their byte offsets. Joining them is all it takes: the
result is a plain ONNX model with input 1x3x1024x1024 (RGB / 255 - 0.5) and output
``output`` (1, 1, 1024, 1024) in [0, 1].
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

INPUT_SIZE = 1024
MODEL_KEY = "/models/medium"  # fp32, 88 MB; "/models/small" is the fp16 one (44 MB)


def join_chunks(package_dist: str | Path, out: str | Path, key: str = MODEL_KEY) -> Path:
    """Concatenate ``key``'s chunks from ``package_dist`` (the npm package's ``dist/``) into
    ``out``, checking each chunk's sha256, its offsets and the total size."""
    dist = Path(package_dist)
    entry = json.loads((dist / "resources.json").read_text())[key]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(out.with_suffix(".part"), "wb") as joined:
        for chunk in entry["chunks"]:
            data = (dist / chunk["hash"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != chunk["hash"]:
                raise ValueError(f"ISNet chunk {chunk['hash']}: sha256 differs from its name")
            start, stop = chunk["offsets"]
            if (start, stop) != (written, written + len(data)):
                raise ValueError(f"ISNet chunk {chunk['hash']}: offsets {start}..{stop} misplaced")
            joined.write(data)
            written += len(data)
    if written != entry["size"]:
        raise ValueError(f"ISNet {key}: {written} bytes joined, resources.json: {entry['size']}")
    out.with_suffix(".part").replace(out)
    return out


def isnet_input(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (1, 3, 1024, 1024) float32, RGB / 255 - 0.5."""
    resized = Image.fromarray(image).resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
    pixels = np.asarray(resized, dtype=np.float32) / 255.0 - 0.5
    return pixels.transpose(2, 0, 1)[None]


def isnet_output(output: np.ndarray, height: int, width: int) -> np.ndarray:
    """(1, 1, 1024, 1024) -> (height, width) float32 saliency in [0, 1]."""
    probability = Image.fromarray(np.clip(output[0, 0], 0.0, 1.0).astype(np.float32), mode="F")
    return np.asarray(probability.resize((width, height), Image.BILINEAR), dtype=np.float32)
