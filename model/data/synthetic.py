"""Procedural five-task scenes: exact labels from the geometry, deterministic by seed.

A scene is 1-4 solids (spheres, boxes, cylinders, cones and, in about half the scenes, one
articulated person) in front of a tilted, textured background plane, rendered by ray casting
(``geometry.py``) with an orthographic camera, a z-buffer, Lambertian light from a random
direction, aerial perspective (haze that grows with distance), colour jitter and pixel noise.
The plane's tilt is part of the normals ground truth, so the image must show it: its texture is
laid in the plane's own coordinates (foreshortened along the tilt) and the haze brightens or
darkens it along the tilt, the farther side more hazy. The scene is drawn from the seed before the
resolution is known, so the same index renders the same scene at any resolution.

Labels (see ``model/data/__init__.py`` for the shared formats):
  - ``semseg``: ``SYNTHETIC_CLASSES`` ids of the visible surface; the background plane is 0.
  - ``parts``: ``PARTS_CLASSES`` ids on person pixels (head, torso, upper/lower arms, upper/lower
    legs), 0 on every other pixel, and all 255 when no person pixel is visible (as in PASCAL).
  - ``saliency``: 1 on every foreground pixel (persons and solids), 0 on the background plane.
  - ``normals``: the exact surface normal of the visible surface, x right, y up, z towards the
    camera, valid everywhere (solids and background plane).
  - ``edges``: 1 on instance boundaries of the visible-id buffer (solid/solid, solid/background,
    person/anything; not between a person's own parts), 1 px wide by default (the pixel whose
    right or lower neighbour belongs to another instance), 2 px with ``edge_width=2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.data.geometry import (
    RAY_START,
    Primitive,
    axis_rotation,
    cast,
    frame_from_axis,
    random_rotation,
)
from model.data.labels import label_boundaries
from model.data.sample import Sample
from model.tasks import IGNORE_INDEX, PARTS_CLASSES, SYNTHETIC_CLASSES

SPLITS = ("train", "val", "test")
SOLIDS = ("sphere", "box", "cylinder", "cone")
_CLASS = {name: index for index, name in enumerate(SYNTHETIC_CLASSES)}
_PART = {name: index for index, name in enumerate(PARTS_CLASSES)}
_BACKGROUND_DEPTH = 1.6  # the background plane passes through z = -1.6 at the image centre
HAZE_DENSITY = 0.35  # per unit of ray distance beyond _HAZE_START
_HAZE_START = RAY_START - 1.0  # z = 1: nothing in a scene is nearer than this


@dataclass(frozen=True)
class Scene:
    """Everything random about one image, independent of the resolution."""

    primitives: tuple[Primitive, ...]
    plane_normal: np.ndarray  # (3,) unit, z > 0
    texture: dict  # background texture parameters, see ``_background_albedo``
    light: np.ndarray  # (3,) unit direction towards the light, z > 0
    haze: np.ndarray  # (3,) colour that distant surfaces fade to
    ambient: float
    gain: np.ndarray  # (3,) per-channel colour jitter
    noise: float  # std of the additive pixel noise, in [0, 1] intensity units
    noise_seed: int


class SyntheticScenes:
    """``length`` scenes of ``size`` (int or (height, width)) pixels; item ``i`` is a ``Sample``.

    Item ``i`` depends only on (seed, split, i): the same arguments give the same pixels, another
    seed or split gives other scenes. NumPy only.
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        length: int,
        seed: int = 0,
        split: str = "train",
        person_probability: float = 0.5,
        edge_width: int = 1,
    ) -> None:
        self.height, self.width = (size, size) if isinstance(size, int) else tuple(size)
        if self.height < 8 or self.width < 8:
            raise ValueError(f"size must be at least 8x8 pixels, got {size}")
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        if edge_width not in (1, 2):
            raise ValueError(f"edge_width must be 1 or 2, got {edge_width}")
        self.length, self.seed, self.split = length, seed, split
        self.person_probability = person_probability
        self.edge_width = edge_width

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} scenes")
        index %= self.length
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
        scene = sample_scene(rng, self.person_probability)
        return render(scene, self.height, self.width, self.edge_width, f"{self.split}_{index:06d}")


# ---------------------------------------------------------------- scene sampling


def sample_scene(rng: np.random.Generator, person_probability: float = 0.5) -> Scene:
    """Draw one scene: 1-4 objects, one of them a person with ``person_probability``."""
    count = int(rng.integers(1, 5))
    has_person = rng.random() < person_probability
    centres = _spread_centres(rng, count)
    scale = 1.0 if count <= 2 else 0.8  # crowded scenes get smaller objects
    primitives: list[Primitive] = []
    for instance, centre in enumerate(centres, start=1):
        if has_person and instance == 1:
            # Keep the figure vertically inside the view: its origin is at the hips.
            primitives += _person(rng, centre * np.array([1.0, 0.3, 1.0]), scale, instance)
        else:
            primitives.append(_solid(rng, str(rng.choice(SOLIDS)), centre, scale, instance))
    tilt = rng.uniform(-0.45, 0.45, size=2)
    light = np.array([*rng.uniform(-0.8, 0.8, size=2), rng.uniform(0.4, 1.0)])
    return Scene(
        primitives=tuple(primitives),
        plane_normal=_unit(np.array([tilt[0], tilt[1], 1.0])),
        texture=_sample_texture(rng),
        light=_unit(light),
        haze=rng.uniform(0.45, 0.85) + rng.uniform(-0.05, 0.05, size=3),
        ambient=float(rng.uniform(0.2, 0.45)),
        gain=rng.uniform(0.85, 1.15, size=3),
        noise=float(rng.uniform(0.0, 0.04)),
        noise_seed=int(rng.integers(2**31)),
    )


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def _spread_centres(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Object centres in the view, kept apart when possible so each one stays visible."""
    centres: list[np.ndarray] = []
    for _ in range(count):
        best, best_gap = None, -1.0
        for _ in range(12):  # keep the candidate farthest from the others
            xy = rng.uniform(-0.6, 0.6, size=2)
            gap = min((np.linalg.norm(xy - c[:2]) for c in centres), default=np.inf)
            if gap > best_gap:
                best, best_gap = xy, gap
            if gap > 0.7:
                break
        centres.append(np.array([best[0], best[1], rng.uniform(-0.4, 0.4)]))
    return centres


def _albedo(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.15, 0.95, size=3)


def _solid(rng, name: str, centre: np.ndarray, scale: float, instance: int) -> Primitive:
    """One sphere, box, cylinder or cone, randomly sized and oriented."""
    size = scale * rng.uniform(0.35, 0.55)
    if name == "sphere":
        kind, shape = "ellipsoid", (size, size, size)
    elif name == "box":
        kind, shape = "box", tuple(size * rng.uniform(0.55, 0.9, size=3))
    elif name == "cylinder":
        kind, shape = "cylinder", (size * rng.uniform(0.5, 0.8), size * rng.uniform(0.6, 1.0))
    else:
        kind, shape = "cone", (size * rng.uniform(0.6, 0.9), size * rng.uniform(1.4, 2.0))
    return Primitive(
        kind=kind,
        centre=centre,
        rotation=random_rotation(rng),
        size=tuple(float(s) for s in shape),
        bound=float(np.linalg.norm(shape)),
        class_id=_CLASS[name],
        instance_id=instance,
        part_id=0,
        albedo=_albedo(rng),
    )


def _person(rng, centre: np.ndarray, scale: float, instance: int) -> list[Primitive]:
    """An articulated figure about ``height`` tall: head, torso and eight limb capsules.

    Built in a body frame (y up, feet near -0.47, head top near +0.47, unit height), then
    scaled, turned about the vertical and tilted in the image plane.
    """
    height = scale * rng.uniform(1.2, 1.7)
    pose = axis_rotation(2, rng.uniform(-0.25, 0.25)) @ axis_rotation(1, rng.uniform(-1.0, 1.0))
    skin, shirt, trousers = _albedo(rng), _albedo(rng), _albedo(rng)

    def place(point: np.ndarray) -> np.ndarray:
        return centre + height * (pose @ point)

    def part(kind, middle, rotation, size, part_name, albedo) -> Primitive:
        size = tuple(float(height * s) for s in size)
        return Primitive(
            kind=kind,
            centre=place(middle),
            rotation=pose @ rotation,
            size=size,
            bound=float(np.linalg.norm(size) + (size[1] if kind == "capsule" else 0.0)),
            class_id=_CLASS["person"],
            instance_id=instance,
            part_id=_PART[part_name],
            albedo=albedo,
        )

    body = [
        part("ellipsoid", np.array([0, 0.39, 0]), np.eye(3), (0.08, 0.085, 0.08), "head", skin),
        part("ellipsoid", np.array([0, 0.13, 0]), np.eye(3), (0.13, 0.18, 0.08), "torso", shirt),
    ]
    for side in (-1.0, 1.0):
        shoulder, hip = np.array([side * 0.14, 0.26, 0]), np.array([side * 0.065, -0.01, 0])
        body += _limb(rng, part, shoulder, side, arm=True, colours=(shirt, skin))
        body += _limb(rng, part, hip, side, arm=False, colours=(trousers, trousers))
    return body


def _limb(rng, part, joint: np.ndarray, side: float, arm: bool, colours) -> list[Primitive]:
    """Two capsules from a shoulder or hip joint, with random joint angles (body frame)."""
    if arm:
        lengths, radii = (0.16, 0.15), (0.045, 0.04)
        spread, swing, bend = rng.uniform(-0.3, 2.6), rng.uniform(-0.7, 0.7), rng.uniform(0, 2.0)
        names = ("upper_arm", "lower_arm")
    else:
        lengths, radii = (0.22, 0.22), (0.065, 0.055)
        spread, swing, bend = rng.uniform(-0.1, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(0, 1.4)
        names = ("upper_leg", "lower_leg")
    down = np.array([0.0, -1.0, 0.0])
    # spread: away from the body in the image plane; swing: forward/back; bend: at elbow/knee.
    upper_turn = axis_rotation(2, side * spread) @ axis_rotation(0, swing)
    lower_turn = upper_turn @ axis_rotation(0, bend if arm else -bend)
    segments, start = [], joint
    for length, radius, turn, name, colour in zip(
        lengths, radii, (upper_turn, lower_turn), names, colours, strict=True
    ):
        axis = turn @ down
        end = start + length * axis
        segments.append(
            part(
                "capsule",
                (start + end) / 2,
                frame_from_axis(axis),
                (radius, length / 2),
                name,
                colour,
            )
        )
        start = end
    return segments


def _sample_texture(rng: np.random.Generator) -> dict:
    """Background albedo: a gradient, stripes or smooth noise, between two random colours."""
    return {
        "kind": str(rng.choice(("gradient", "stripes", "noise"))),
        "colours": rng.uniform(0.1, 0.9, size=(2, 3)),
        "angle": float(rng.uniform(0, np.pi)),
        "frequency": float(rng.uniform(2.0, 8.0)),
        "grid": rng.random((6, 6)),
    }


# ---------------------------------------------------------------- rendering


def pixel_coordinates(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """World x (right) and y (up) of pixel centres; the shorter side spans [-1, 1]."""
    pixel = 2.0 / min(height, width)
    x = (np.arange(width) + 0.5 - width / 2) * pixel
    y = (height / 2 - np.arange(height) - 0.5) * pixel
    return x, y


def render(scene: Scene, height: int, width: int, edge_width: int = 1, name: str = "") -> Sample:
    """Ray-cast the scene into an image and the exact labels of all five tasks."""
    buffers = render_buffers(scene, height, width)
    semseg = buffers["class"].astype(np.uint8)
    person = semseg == _CLASS["person"]
    parts = buffers["part"].astype(np.uint8) if person.any() else np.full_like(semseg, IGNORE_INDEX)
    return Sample(
        image=_shade(scene, buffers),
        semseg=semseg,
        parts=parts,
        saliency=(semseg > 0).astype(np.uint8),
        normals=buffers["normal"].astype(np.float32),
        normals_valid=np.ones((height, width), dtype=bool),
        edges=label_boundaries(buffers["instance"], both_sides=edge_width == 2).astype(np.uint8),
        name=name,
    )


def render_buffers(scene: Scene, height: int, width: int) -> dict[str, np.ndarray]:
    """The z-buffer after all solids: per pixel ``depth`` (ray distance), ``normal``, ``albedo``,
    ``class``, ``instance`` (0 = background) and ``part`` of the nearest surface."""
    x, y = pixel_coordinates(height, width)
    buffers = _background_buffers(scene, x, y)
    for primitive in scene.primitives:
        _draw(primitive, x, y, buffers)
    return buffers


def _background_buffers(scene: Scene, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Z-buffer state before any solid: the background plane everywhere."""
    height, width = len(y), len(x)
    xx, yy = np.meshgrid(x, y)  # (H, W) each
    n = scene.plane_normal
    plane_z = -_BACKGROUND_DEPTH - (n[0] * xx + n[1] * yy) / n[2]
    # Texture coordinates from the plane's point at the image centre, where it is laid out.
    u, v = plane_coordinates(n, np.stack([xx, yy, plane_z + _BACKGROUND_DEPTH], axis=-1))
    return {
        "depth": RAY_START - plane_z,  # ray distance, same convention as geometry.cast
        "normal": np.broadcast_to(n, (height, width, 3)).copy(),
        "albedo": _background_albedo(scene.texture, u, v),
        "class": np.zeros((height, width), dtype=np.int32),
        "instance": np.zeros((height, width), dtype=np.int32),
        "part": np.zeros((height, width), dtype=np.int32),
    }


def plane_coordinates(normal: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) of ``points`` (..., 3) in an orthonormal frame of the plane with unit ``normal``:
    u along the world x axis projected into the plane, v = normal x u. For a frontal plane
    these are the world x and y."""
    u_axis = _unit(np.array([1.0, 0.0, 0.0]) - normal[0] * normal)
    v_axis = np.cross(normal, u_axis)
    return points @ u_axis, points @ v_axis


def _background_albedo(texture: dict, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """(H, W, 3) background reflectance, a mix of two colours by a pattern in [0, 1]."""
    along = np.cos(texture["angle"]) * xx + np.sin(texture["angle"]) * yy
    if texture["kind"] == "gradient":
        mix = np.clip((along + 1.4) / 2.8, 0, 1)
    elif texture["kind"] == "stripes":
        mix = 0.5 + 0.5 * np.sin(texture["frequency"] * np.pi * along)
    else:
        mix = _smooth_noise(texture["grid"], xx, yy)
    low, high = texture["colours"]
    return low + mix[..., None] * (high - low)


def _smooth_noise(grid: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a coarse random grid laid over [-1.5, 1.5]^2 (value noise)."""
    cells = grid.shape[0] - 1
    u = np.clip((xx + 1.5) / 3.0, 0, 1) * cells
    v = np.clip((yy + 1.5) / 3.0, 0, 1) * cells
    i0, j0 = np.minimum(u.astype(int), cells - 1), np.minimum(v.astype(int), cells - 1)
    fu, fv = u - i0, v - j0
    top = grid[j0, i0] * (1 - fu) + grid[j0, i0 + 1] * fu
    bottom = grid[j0 + 1, i0] * (1 - fu) + grid[j0 + 1, i0 + 1] * fu
    return top * (1 - fv) + bottom * fv


def _draw(primitive: Primitive, x: np.ndarray, y: np.ndarray, buffers: dict) -> None:
    """Cast rays only inside the primitive's screen bounding square; keep the nearer surface."""
    cx, cy = primitive.centre[:2]
    cols = np.flatnonzero(np.abs(x - cx) <= primitive.bound)
    rows = np.flatnonzero(np.abs(y - cy) <= primitive.bound)
    if not len(cols) or not len(rows):
        return
    window = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    xx, yy = np.meshgrid(x[window[1]], y[window[0]])  # (h, w) each
    t, normal = cast(primitive, np.stack([xx.ravel(), yy.ravel()], axis=1))
    shape = xx.shape
    nearer = t.reshape(shape) < buffers["depth"][window]  # (h, w)
    updates = {
        "depth": t.reshape(shape),
        "normal": normal.reshape(*shape, 3),
        "albedo": primitive.albedo,
        "class": primitive.class_id,
        "instance": primitive.instance_id,
        "part": primitive.part_id,
    }
    for key, value in updates.items():
        buffers[key][window][nearer] = value if np.ndim(value) <= 1 else value[nearer]


def _shade(scene: Scene, buffers: dict) -> np.ndarray:
    """Lambertian shading, haze, colour jitter and noise -> (H, W, 3) uint8."""
    diffuse = np.clip(buffers["normal"] @ scene.light, 0.0, None)
    light = scene.ambient + (1.0 - scene.ambient) * diffuse
    image = buffers["albedo"] * light[..., None]
    clear = np.exp(-HAZE_DENSITY * (buffers["depth"] - _HAZE_START))[..., None]
    image = (image * clear + scene.haze * (1.0 - clear)) * scene.gain
    noise_rng = np.random.default_rng(scene.noise_seed)
    image = image + noise_rng.normal(0.0, scene.noise, size=image.shape)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
