"""Ray-primitive intersections for the synthetic indoor scenes.

Intersections are vectorised over an ``(N, 3)`` array of ray directions;
``origin`` is either one point (the camera centre of a pinhole camera) or
``(N, 3)`` points (shadow rays from the visible surfaces).
Directions are NOT normalised: the renderer scales them so that their camera
z component is 1, which makes the ray parameter ``t`` equal to the z-depth.

World frame: x and z horizontal, y up (metres). Each primitive answers two
questions: ``hit(origin, dirs) -> t`` (``inf`` where missed) and
``normal(points) -> n`` for points on its surface (outward unit normals;
planes of the room point into the room). Normals are recomputed from the hit
points rather than carried through the z-buffer, which keeps ``hit`` cheap.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Hits closer than this are ignored (self-intersection guard, metres).
EPS = 1e-6


def _first_positive(*ts: np.ndarray) -> np.ndarray:
  """Element-wise smallest t > EPS over the candidates, inf if none."""
  out = np.full(ts[0].shape, np.inf)
  for t in ts:
    t = np.where(np.isfinite(t) & (t > EPS), t, np.inf)
    out = np.minimum(out, t)
  return out


@dataclasses.dataclass(frozen=True)
class Plane:
  """Infinite plane ``{p : n . p = offset}`` seen from its normal side."""
  n: np.ndarray
  offset: float

  def hit(self, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    dn = dirs @ self.n
    with np.errstate(divide="ignore", invalid="ignore"):
      t = (self.offset - origin @ self.n) / dn
    return _first_positive(t)

  def normal(self, points: np.ndarray) -> np.ndarray:
    return np.broadcast_to(self.n, points.shape).copy()

  def local(self, points: np.ndarray) -> np.ndarray:
    """Texture coordinates: the world coordinates themselves."""
    return points


def yaw_matrix(yaw: float) -> np.ndarray:
  """Rotation about the world y (up) axis; columns are the local axes."""
  c, s = np.cos(yaw), np.sin(yaw)
  return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclasses.dataclass(frozen=True)
class Box:
  """Box with half sizes ``half`` around ``center``, rotated by ``yaw``."""
  center: np.ndarray
  half: np.ndarray
  yaw: float = 0.0

  @property
  def rot(self) -> np.ndarray:
    return yaw_matrix(self.yaw)

  def local(self, points: np.ndarray) -> np.ndarray:
    return (points - self.center) @ self.rot

  def hit(self, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    o = (origin - self.center) @ self.rot
    d = dirs @ self.rot
    # Slab test per axis (column-wise ops are much faster than axis=1
    # reductions); a tiny direction avoids 0/0 on axis-parallel rays.
    t_near, t_far = -np.inf, np.inf
    for k in range(3):
      dk = d[:, k]
      inv = 1.0 / np.where(np.abs(dk) < 1e-12, 1e-12, dk)
      t1 = (-self.half[k] - o[..., k]) * inv
      t2 = (self.half[k] - o[..., k]) * inv
      t_near = np.maximum(t_near, np.minimum(t1, t2))
      t_far = np.minimum(t_far, np.maximum(t1, t2))
    ok = (t_far >= t_near) & (t_near > EPS)
    return np.where(ok, t_near, np.inf)

  def normal(self, points: np.ndarray) -> np.ndarray:
    q = self.local(points) / self.half
    axis = np.abs(q).argmax(axis=1)
    n_local = np.zeros_like(q)
    rows = np.arange(len(q))
    n_local[rows, axis] = np.sign(q[rows, axis])
    return n_local @ self.rot.T


@dataclasses.dataclass(frozen=True)
class Sphere:
  center: np.ndarray
  radius: float

  def local(self, points: np.ndarray) -> np.ndarray:
    return points - self.center

  def hit(self, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    oc = origin - self.center
    a = np.einsum("ij,ij->i", dirs, dirs)
    b = 2.0 * np.sum(dirs * oc, axis=-1)
    c = np.sum(oc * oc, axis=-1) - self.radius**2
    disc = b * b - 4.0 * a * c
    with np.errstate(invalid="ignore"):
      t = (-b - np.sqrt(disc)) / (2.0 * a)
    return _first_positive(np.where(disc >= 0, t, np.inf))

  def normal(self, points: np.ndarray) -> np.ndarray:
    return (points - self.center) / self.radius


@dataclasses.dataclass(frozen=True)
class Cylinder:
  """Vertical capped cylinder: axis through (x, z), heights y0..y1."""
  x: float
  z: float
  radius: float
  y0: float
  y1: float

  def local(self, points: np.ndarray) -> np.ndarray:
    return points - np.array([self.x, self.y0, self.z])

  def hit(self, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    ox, oy, oz = (origin[..., 0] - self.x, origin[..., 1],
                  origin[..., 2] - self.z)
    dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    a = dx * dx + dz * dz
    b = 2.0 * (dx * ox + dz * oz)
    c = ox * ox + oz * oz - self.radius**2
    disc = b * b - 4.0 * a * c
    with np.errstate(divide="ignore", invalid="ignore"):
      t_side = (-b - np.sqrt(disc)) / (2.0 * a)
      y_side = oy + t_side * dy
      side_ok = (disc >= 0) & (y_side >= self.y0) & (y_side <= self.y1)
      caps = []
      for y_cap in (self.y0, self.y1):
        t = (y_cap - oy) / dy
        rx, rz = ox + t * dx, oz + t * dz
        caps.append(np.where(rx * rx + rz * rz <= self.radius**2, t, np.inf))
    return _first_positive(np.where(side_ok, t_side, np.inf), *caps)

  def normal(self, points: np.ndarray) -> np.ndarray:
    rel = points - np.array([self.x, 0.0, self.z])
    tol = 1e-7 * max(1.0, abs(self.y1))
    n = np.stack([rel[:, 0], np.zeros(len(rel)), rel[:, 2]], axis=1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    top = np.abs(points[:, 1] - self.y1) < tol
    bottom = np.abs(points[:, 1] - self.y0) < tol
    n[top] = (0.0, 1.0, 0.0)
    n[bottom] = (0.0, -1.0, 0.0)
    return n


Primitive = Plane | Box | Sphere | Cylinder
