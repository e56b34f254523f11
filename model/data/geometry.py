"""Ray casting of analytic 3-D primitives, vectorised over pixels (NumPy only).

The camera is orthographic and looks down -z: every pixel's ray starts at ``z = RAY_START`` and
travels along ``(0, 0, -1)``, so the hit distance ``t`` is a depth (smaller = nearer) and a
surface facing the camera has a normal with positive z. Axes: x right, y up, z towards the
camera. Each primitive lives in its own frame (centre + rotation whose columns are the local
axes in world coordinates); a hit function receives the rays in that frame and returns the
distance of the nearest hit (``inf`` on a miss) and the local outward normal there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RAY_START = 10.0
MISS = np.inf
_EPS = 1e-9


@dataclass(frozen=True)
class Primitive:
    """A solid to render plus the labels its pixels carry."""

    kind: str  # "ellipsoid" | "box" | "cylinder" | "cone" | "capsule"
    centre: np.ndarray  # (3,) world position
    rotation: np.ndarray  # (3, 3) columns = local x, y, z axes in world coordinates
    size: tuple[float, ...]  # kind-specific, see HIT_FUNCTIONS
    bound: float  # radius of a sphere around ``centre`` that holds the whole solid
    class_id: int
    instance_id: int
    part_id: int
    albedo: np.ndarray  # (3,) RGB reflectance in [0, 1]


def _near_root(a, b, c) -> np.ndarray:
    """Smaller root of ``a t^2 + 2 b t + c = 0`` (``inf`` where there is none); a > 0."""
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    safe_a = np.where(np.abs(a) < _EPS, _EPS, a)
    t = (-b - root) / safe_a
    return np.where((disc >= 0) & (np.abs(a) >= _EPS), t, MISS)


def _both_roots(a, b, c) -> tuple[np.ndarray, np.ndarray]:
    """Both roots of ``a t^2 + 2 b t + c = 0`` in any order (``inf`` where none); any sign of a."""
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    safe_a = np.where(np.abs(a) < _EPS, _EPS, a)
    ok = (disc >= 0) & (np.abs(a) >= _EPS)
    return np.where(ok, (-b - root) / safe_a, MISS), np.where(ok, (-b + root) / safe_a, MISS)


def _nearest(*hits: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per ray, the hit with the smallest distance among several (t, normal) candidates."""
    distances = np.stack([t for t, _ in hits])  # (K, P)
    normals = np.stack([n for _, n in hits])  # (K, P, 3)
    best = distances.argmin(axis=0)  # (P,)
    rays = np.arange(distances.shape[1])
    return distances[best, rays], normals[best, rays]


def hit_ellipsoid(origin: np.ndarray, direction: np.ndarray, size: tuple[float, ...]):
    """``size = (rx, ry, rz)``: the semi-axes."""
    radii = np.asarray(size)
    o, d = origin / radii, direction / radii  # ray in the frame where the ellipsoid is a unit ball
    t = _near_root(d @ d, o @ d, np.einsum("pi,pi->p", o, o) - 1.0)
    point = origin + np.where(np.isfinite(t), t, 0.0)[:, None] * direction
    return t, point / radii**2


def hit_box(origin: np.ndarray, direction: np.ndarray, size: tuple[float, ...]):
    """``size = (hx, hy, hz)``: half extents. Slab test: the ray is inside all three slabs."""
    half = np.asarray(size)
    step = np.where(np.abs(direction) < _EPS, _EPS, direction)
    t1, t2 = (-half - origin) / step, (half - origin) / step  # (P, 3)
    t_in, t_out = np.minimum(t1, t2), np.maximum(t1, t2)
    near, far = t_in.max(axis=1), t_out.min(axis=1)
    t = np.where(near <= far, near, MISS)
    axis = t_in.argmax(axis=1)  # the face the ray enters through
    normal = np.zeros_like(origin)
    normal[np.arange(len(axis)), axis] = -np.sign(step[axis])
    return t, normal


def _disk(origin, direction, z: float, radius: float, facing: float):
    """Hit of the disk ``x^2 + y^2 <= radius^2`` in the plane ``z`` (a cylinder or cone cap)."""
    if abs(direction[2]) < _EPS:
        return np.full(len(origin), MISS), np.zeros_like(origin)
    t = (z - origin[:, 2]) / direction[2]
    point = origin + t[:, None] * direction
    inside = point[:, 0] ** 2 + point[:, 1] ** 2 <= radius**2
    normal = np.zeros_like(origin)
    normal[:, 2] = facing
    return np.where(inside, t, MISS), normal


def _side(origin, direction, t, z_low: float, z_high: float):
    """Keep a lateral-surface hit only between two heights; return it with its hit points."""
    point = origin + np.where(np.isfinite(t), t, 0.0)[:, None] * direction
    keep = np.isfinite(t) & (point[:, 2] >= z_low) & (point[:, 2] <= z_high)
    return np.where(keep, t, MISS), point


def hit_cylinder(origin: np.ndarray, direction: np.ndarray, size: tuple[float, ...]):
    """``size = (radius, half_height)``: axis along local z, closed by two caps."""
    radius, half = size
    dxy, oxy = direction[:2], origin[:, :2]
    t = _near_root(dxy @ dxy, oxy @ dxy, np.einsum("pi,pi->p", oxy, oxy) - radius**2)
    t, point = _side(origin, direction, t, -half, half)
    side_normal = point * np.array([1.0, 1.0, 0.0])
    return _nearest(
        (t, side_normal),
        _disk(origin, direction, half, radius, 1.0),
        _disk(origin, direction, -half, radius, -1.0),
    )


def hit_cone(origin: np.ndarray, direction: np.ndarray, size: tuple[float, ...]):
    """``size = (base_radius, height)``: apex at local z = +height/2, base disk at -height/2."""
    radius, height = size
    slope2 = (radius / height) ** 2
    w0 = height / 2 - origin[:, 2]  # distance below the apex plane at the ray origin
    a = direction[0] ** 2 + direction[1] ** 2 - slope2 * direction[2] ** 2
    b = origin[:, 0] * direction[0] + origin[:, 1] * direction[1] + slope2 * w0 * direction[2]
    c = origin[:, 0] ** 2 + origin[:, 1] ** 2 - slope2 * w0**2
    hits = []
    for root in _both_roots(a, b, c):  # a may be negative: the double cone; keep our nappe
        t, point = _side(origin, direction, root, -height / 2, height / 2)
        normal = point.copy()
        normal[:, 2] = slope2 * (height / 2 - point[:, 2])
        hits.append((t, normal))
    return _nearest(*hits, _disk(origin, direction, -height / 2, radius, -1.0))


def _sphere(origin, direction, centre_z: float, radius: float):
    o = origin - np.array([0.0, 0.0, centre_z])
    t = _near_root(direction @ direction, o @ direction, np.einsum("pi,pi->p", o, o) - radius**2)
    return t, o + np.where(np.isfinite(t), t, 0.0)[:, None] * direction


def hit_capsule(origin: np.ndarray, direction: np.ndarray, size: tuple[float, ...]):
    """``size = (radius, half_length)``: a cylinder along local z with hemispherical ends."""
    radius, half = size
    dxy, oxy = direction[:2], origin[:, :2]
    t = _near_root(dxy @ dxy, oxy @ dxy, np.einsum("pi,pi->p", oxy, oxy) - radius**2)
    t, point = _side(origin, direction, t, -half, half)
    return _nearest(
        (t, point * np.array([1.0, 1.0, 0.0])),
        _sphere(origin, direction, half, radius),
        _sphere(origin, direction, -half, radius),
    )


HIT_FUNCTIONS = {
    "ellipsoid": hit_ellipsoid,
    "box": hit_box,
    "cylinder": hit_cylinder,
    "cone": hit_cone,
    "capsule": hit_capsule,
}


def cast(primitive: Primitive, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth ``t`` (P,) and unit world normals (P, 3) of ``primitive`` for rays through ``xy``."""
    origin = np.empty((len(xy), 3))
    origin[:, :2] = xy
    origin[:, 2] = RAY_START
    local_origin = (origin - primitive.centre) @ primitive.rotation  # (P, 3) in the local frame
    local_direction = -primitive.rotation[2]  # world (0, 0, -1) in the local frame
    t, local_normal = HIT_FUNCTIONS[primitive.kind](local_origin, local_direction, primitive.size)
    normal = local_normal @ primitive.rotation.T  # back to world axes
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), _EPS)
    return t, normal


def frame_from_axis(axis: np.ndarray) -> np.ndarray:
    """A rotation whose local z is ``axis`` (a limb's direction); x, y complete it."""
    z = axis / np.linalg.norm(axis)
    helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], axis=1)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation (from a random unit quaternion)."""
    w, x, y, z = rng.normal(size=4)  # a normal 4-vector has a uniformly random direction
    norm = np.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / norm, x / norm, y / norm, z / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def axis_rotation(axis: int, angle: float) -> np.ndarray:
    """Rotation by ``angle`` radians about world axis 0 (x), 1 (y) or 2 (z)."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    rotation = np.eye(3)
    rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = c, -s, s, c
    return rotation
