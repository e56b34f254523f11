"""Label-map helpers shared by the synthetic scenes and the PASCAL loader (NumPy only)."""

from __future__ import annotations

import numpy as np


def label_boundaries(labels: np.ndarray, both_sides: bool = False) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour has another label (1 px wide).

    A boundary between two regions has pixels on both sides that differ from a neighbour;
    keeping only the side whose right/lower neighbour differs gives a 1 px line.
    ``both_sides=True`` marks both sides (any 4-neighbour differs): a 2 px line.
    """
    right = labels[:, :-1] != labels[:, 1:]  # (H, W-1)
    down = labels[:-1, :] != labels[1:, :]  # (H-1, W)
    edges = np.zeros(labels.shape, dtype=bool)
    edges[:, :-1] |= right
    edges[:-1, :] |= down
    if both_sides:
        edges[:, 1:] |= right
        edges[1:, :] |= down
    return edges


def laplacian_support(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: where the 4-neighbour Laplacian of the label map is non-zero.

    The border is reflected without repeating the edge pixel (reflect-101: ``d c b | a b c d
    | c b a``), OpenCV's default and so what ``cv2.Laplacian`` computes: a region touching the
    border has no boundary there.
    """
    padded = np.pad(labels.astype(np.int64), 1, mode="reflect")
    neighbours = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    laplacian = neighbours - 4 * padded[1:-1, 1:-1]
    return laplacian != 0
