"""Random indoor scene descriptions: room, furniture, a mannequin, lights.

A scene is a list of primitives (see geometry.py) each tagged with a semantic
class, an instance id, a part id (only the mannequin has parts, imitating
PASCAL-Context's human parts) and a procedural texture. Nothing here touches
pixels; render.py ray-casts a scene at any resolution, so one seed gives the
same scene at every image size.
"""

from __future__ import annotations

import colorsys
import dataclasses

import numpy as np

from data_builders.synthetic_scenes import geometry as geo

CLASS_NAMES = ("floor", "wall", "ceiling", "cabinet", "table", "crate",
               "ball", "barrel", "pillar", "picture", "person")
# Classes 0..2 are the room ("stuff"); the rest are salient objects.
NUM_ROOM_CLASSES = 3
PART_NAMES = ("background", "head", "torso", "upper_arm", "lower_arm",
              "upper_leg", "lower_leg")
C = {name: i for i, name in enumerate(CLASS_NAMES)}


@dataclasses.dataclass(frozen=True)
class Texture:
  """Procedural albedo: ``kind`` picks the pattern in render.py."""
  kind: str  # plain | checker | planks | bands | blobs
  c0: np.ndarray
  c1: np.ndarray
  scale: float = 0.5
  axis: int = 1
  waves: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros((3, 3)))
  phases: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))


@dataclasses.dataclass(frozen=True)
class Entry:
  prim: geo.Primitive
  cls: int
  inst: int
  part: int
  tex: Texture


@dataclasses.dataclass(frozen=True)
class Camera:
  """Pinhole camera; ``rot`` columns are the camera x (right), y (down) and
  z (forward) axes in world coordinates (OpenCV camera frame)."""
  origin: np.ndarray
  rot: np.ndarray
  hfov: float


@dataclasses.dataclass(frozen=True)
class Scene:
  entries: list[Entry]
  camera: Camera
  lights: np.ndarray  # (L, 3) unit directions towards the lights
  intensities: np.ndarray  # (L,)
  ambient: float
  noise: float


def _hsv(rng, h, s, v) -> np.ndarray:
  """Colour from HSV ranges (each a (lo, hi) pair or a number)."""
  pick = lambda r: rng.uniform(*r) if isinstance(r, tuple) else r
  return np.array(colorsys.hsv_to_rgb(pick(h) % 1.0, pick(s), pick(v)))


def _texture(rng, kind, c0, c1=None, **kw) -> Texture:
  c1 = c0 * 0.6 if c1 is None else c1
  return Texture(kind=kind, c0=c0, c1=c1, waves=rng.normal(0, 3.0, (3, 3)),
                 phases=rng.uniform(0, 2 * np.pi, 3), **kw)


def _wood(rng) -> np.ndarray:
  return _hsv(rng, (0.05, 0.1), (0.35, 0.6), (0.35, 0.75))


def _room(rng, size) -> list[Entry]:
  lx, lz, h = size
  floor_kind = rng.choice(["planks", "checker"])
  floor_tex = _texture(
      rng, str(floor_kind),
      _wood(rng) if floor_kind == "planks" else _hsv(rng, (0, 1), (0, .15),
                                                     (.55, .85)),
      scale=float(rng.uniform(0.15, 0.6)), axis=int(rng.choice([0, 2])))
  wall_c = _hsv(rng, (0, 1), (0.05, 0.3), (0.65, 0.92))
  ceil_tex = _texture(rng, "plain", _hsv(rng, (0, 1), (0, .06), (.85, .97)))
  planes = [(C["floor"], (0, 1, 0), 0.0, floor_tex),
            (C["ceiling"], (0, -1, 0), -h, ceil_tex)]
  for n, off in (((1, 0, 0), 0.0), ((-1, 0, 0), -lx), ((0, 0, 1), 0.0),
                 ((0, 0, -1), -lz)):
    accent = rng.uniform() < 0.2
    c = _hsv(rng, (0, 1), (0.2, 0.5), (0.5, 0.8)) if accent else wall_c
    planes.append((C["wall"], n, off, _texture(rng, "plain", c)))
  return [Entry(geo.Plane(np.array(n, float), off), cls, i, 0, tex)
          for i, (cls, n, off, tex) in enumerate(planes)]


def _camera(rng, size) -> Camera:
  lx, lz, _ = size
  pos = np.array([rng.uniform(0.5, lx - 0.5), rng.uniform(1.0, 1.6),
                  rng.uniform(0.5, lz - 0.5)])
  # Look towards a far part of the room so views are rarely just a wall.
  targets = rng.uniform((0, 0), (lx, lz), (16, 2))
  far = np.hypot(targets[:, 0] - pos[0], targets[:, 1] - pos[2])
  tx, tz = targets[far.argmax()]
  yaw = np.arctan2(tx - pos[0], tz - pos[2]) + rng.uniform(-0.3, 0.3)
  pitch, roll = rng.uniform(-0.3, 0.05), rng.uniform(-0.05, 0.05)
  fwd = np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch),
                  np.cos(yaw) * np.cos(pitch)])
  right = np.cross(fwd, (0.0, 1.0, 0.0))
  right /= np.linalg.norm(right)
  down = np.cross(fwd, right)
  right, down = (np.cos(roll) * right + np.sin(roll) * down,
                 -np.sin(roll) * right + np.cos(roll) * down)
  return Camera(pos, np.stack([right, down, fwd], axis=1),
                float(np.deg2rad(rng.uniform(55, 65))))


class _Placer:
  """Rejection sampler of floor positions for non-overlapping footprints."""

  def __init__(self, rng, size, camera: Camera):
    self.rng, self.size, self.cam = rng, size, camera
    self.taken: list[tuple[float, float, float]] = []
    fwd = camera.rot[:, 2]
    self.yaw = np.arctan2(fwd[0], fwd[2])

  def __call__(self, radius: float, near=(1.0, 4.0)) -> np.ndarray | None:
    lx, lz, _ = self.size
    for attempt in range(30):
      if attempt < 20 and self.rng.uniform() < 0.75:  # in view
        r = self.rng.uniform(*near)
        a = self.yaw + self.rng.uniform(-0.4, 0.4) * self.cam.hfov
        x = self.cam.origin[0] + r * np.sin(a)
        z = self.cam.origin[2] + r * np.cos(a)
      else:
        x, z = self.rng.uniform((0, 0), (lx, lz))
      if not (radius < x < lx - radius and radius < z < lz - radius):
        continue
      if np.hypot(x - self.cam.origin[0], z - self.cam.origin[2]) < radius + .4:
        continue
      if any(np.hypot(x - tx, z - tz) < radius + tr + 0.05
             for tx, tz, tr in self.taken):
        continue
      self.taken.append((x, z, radius))
      return np.array([x, z])
    return None


def _box(x, z, y0, half, yaw) -> geo.Box:
  return geo.Box(np.array([x, y0 + half[1], z]), np.asarray(half, float), yaw)


def _at(x, z, yaw, lx, lz) -> tuple[float, float]:
  """World (x, z) of a point given in an object's rotated frame."""
  rot = geo.yaw_matrix(yaw)
  p = rot @ np.array([lx, 0.0, lz])
  return x + p[0], z + p[2]


def _cabinet(rng, place):
  w, d, h = rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.3), rng.uniform(0.6, 1.0)
  xz = place(np.hypot(w, d), near=(1.8, 4.5))
  if xz is None:
    return []
  yaw = rng.integers(4) * np.pi / 2 + rng.uniform(-0.1, 0.1)
  c = _wood(rng) if rng.uniform() < 0.6 else _hsv(rng, (0, 1), (0, .2),
                                                    (.3, .95))
  tex = _texture(rng, "planks", c, scale=float(rng.uniform(0.2, 0.5)))
  return [(_box(*xz, 0.0, (w, h, d), yaw), 0, tex)]


def _table(rng, place):
  w, d = rng.uniform(0.4, 0.8), rng.uniform(0.3, 0.5)
  h, leg = rng.uniform(0.65, 0.8), rng.uniform(0.025, 0.045)
  xz = place(np.hypot(w, d), near=(1.5, 4.5))
  if xz is None:
    return []
  yaw = rng.uniform(0, np.pi)
  tex = _texture(rng, "planks", _wood(rng), scale=float(rng.uniform(.1, .3)),
                 axis=0)
  parts = [(_box(*xz, h - 0.04, (w, 0.02, d), yaw), 0, tex)]
  for sx in (-1, 1):
    for sz in (-1, 1):
      lx, lz = _at(*xz, yaw, sx * (w - 2 * leg), sz * (d - 2 * leg))
      parts.append((_box(lx, lz, 0.0, (leg, (h - 0.04) / 2, leg), yaw), 0,
                    tex))
  return parts


def _crate(rng, place):
  s = rng.uniform(0.15, 0.3)
  xz = place(s * 1.5)
  if xz is None:
    return []
  tex = _texture(rng, "planks", _hsv(rng, (0.07, 0.12), (0.3, 0.6),
                                     (0.5, 0.85)), scale=float(s / 2))
  yaw = rng.uniform(0, np.pi)
  out = [(_box(*xz, 0.0, (s, s, s), yaw), 0, tex)]
  if rng.uniform() < 0.3:  # a smaller crate stacked on top
    s2 = s * rng.uniform(0.6, 0.9)
    out.append((_box(*xz, 2 * s, (s2, s2, s2), yaw + rng.uniform(-.5, .5)),
                0, tex))
  return out


def _ball(rng, place):
  r = rng.uniform(0.1, 0.35)
  xz = place(r)
  if xz is None:
    return []
  c = _hsv(rng, (0, 1), (0.6, 0.9), (0.6, 0.95))
  tex = _texture(rng, "bands", c, np.array([.95, .95, .95]),
                 scale=float(r * rng.uniform(0.5, 1.0)), axis=1)
  return [(geo.Sphere(np.array([xz[0], r, xz[1]]), r), 0, tex)]


def _barrel(rng, place):
  r, h = rng.uniform(0.2, 0.35), rng.uniform(0.5, 1.0)
  xz = place(r)
  if xz is None:
    return []
  c = _hsv(rng, (0, 1), (0.5, 0.8), (0.4, 0.8))
  tex = _texture(rng, "bands", c, c * 0.5, scale=float(h / 3), axis=1)
  return [(geo.Cylinder(xz[0], xz[1], r, 0.0, h), 0, tex)]


def _pillar(rng, place, height):
  r = rng.uniform(0.12, 0.3)
  xz = place(r, near=(2.0, 5.0))
  if xz is None:
    return []
  tex = _texture(rng, "plain", _hsv(rng, (0, 1), (0, 0.1), (0.5, 0.8)))
  return [(geo.Cylinder(xz[0], xz[1], r, 0.0, height), 0, tex)]


def _picture(rng, size):
  lx, lz, h = size
  wall = rng.integers(4)
  w, ph = rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.5)
  y0 = rng.uniform(1.0, h - 0.3 - 2 * ph)
  length = lx if wall < 2 else lz
  u = rng.uniform(w + 0.05, length - w - 0.05)
  t = 0.02  # half thickness; the frame sticks out of the wall by 2t
  x, z, yaw = {0: (t, u, np.pi / 2), 1: (lx - t, u, np.pi / 2),
               2: (u, t, 0.0), 3: (u, lz - t, 0.0)}[int(wall)]
  tex = _texture(rng, "blobs", _hsv(rng, (0, 1), (.3, .9), (.4, .9)),
                 _hsv(rng, (0, 1), (.3, .9), (.4, .9)),
                 scale=float(rng.uniform(4, 12)))
  return [(_box(x, z, y0, (w, ph, t), yaw), 0, tex)]


def _person(rng, place, camera: Camera):
  """A mannequin of primitives whose parts follow PASCAL's 6 human parts."""
  s = rng.uniform(0.85, 1.1)
  arms = rng.choice(["down", "out"], size=2, p=[0.7, 0.3])
  xz = place((0.85 if "out" in arms else 0.35) * s, near=(1.5, 3.5))
  if xz is None:
    return []
  to_cam = np.arctan2(camera.origin[0] - xz[0], camera.origin[2] - xz[1])
  yaw = to_cam + rng.uniform(-1.2, 1.2)
  skin = _hsv(rng, (0.04, 0.1), (0.3, 0.6), (0.45, 0.9))
  shirt = _hsv(rng, (0, 1), (0.4, 0.9), (0.3, 0.9))
  pants = _hsv(rng, (0, 1), (0.2, 0.7), (0.15, 0.6))
  tex = {k: _texture(rng, "plain", c)
         for k, c in (("skin", skin), ("shirt", shirt), ("pants", pants))}
  sleeve = "shirt" if rng.uniform() < 0.5 else "skin"

  def cyl(lx, r, y0, y1):
    x, z = _at(*xz, yaw, lx * s, 0.0)
    return geo.Cylinder(x, z, r * s, y0 * s, y1 * s)

  out = [(geo.Sphere(np.array([xz[0], 1.67 * s, xz[1]]), 0.12 * s), 1,
          tex["skin"]),
         (cyl(0.0, 0.05, 1.45, 1.56), 2, tex["skin"]),
         (_box(*xz, 0.88 * s, np.array([0.19, 0.29, 0.11]) * s, yaw), 2,
          tex["shirt"])]
  for sx in (-1, 1):
    out += [(cyl(sx * 0.1, 0.075, 0.45, 0.88), 5, tex["pants"]),
            (cyl(sx * 0.1, 0.06, 0.0, 0.45), 6, tex["pants"])]
  for sx, pose in zip((-1, 1), arms):
    if pose == "down":
      out += [(cyl(sx * 0.25, 0.055, 1.12, 1.44), 3, tex[sleeve]),
              (cyl(sx * 0.25, 0.045, 0.80, 1.12), 4, tex["skin"])]
    else:  # held out sideways
      for lx, half, part, t in ((0.35, 0.16, 3, sleeve), (0.66, 0.15, 4,
                                                            "skin")):
        x, z = _at(*xz, yaw, sx * lx * s, 0.0)
        out.append((_box(x, z, 1.33 * s, np.array([half, .05, .05]) * s, yaw),
                    part, tex[t]))
  return out


_OBJECTS = ("cabinet", "table", "crate", "ball", "barrel", "pillar",
            "picture")
_OBJECT_P = (0.15, 0.15, 0.2, 0.15, 0.15, 0.05, 0.15)
_FLOOR_OBJECTS = {"cabinet": _cabinet, "table": _table, "crate": _crate,
                  "ball": _ball, "barrel": _barrel}


def sample_scene(rng: np.random.Generator, person_prob: float) -> Scene:
  """Samples a room, a camera inside it, objects, lights and noise."""
  size = (rng.uniform(3.5, 7.0), rng.uniform(3.5, 7.0), rng.uniform(2.5, 3.2))
  entries = _room(rng, size)
  camera = _camera(rng, size)
  place = _Placer(rng, size, camera)
  wanted = []
  if rng.uniform() < person_prob:
    wanted.append("person")
  count = rng.integers(4, 10)
  wanted += list(rng.choice(_OBJECTS, size=count, p=_OBJECT_P))
  for kind in wanted:
    if kind == "person":
      prims = _person(rng, place, camera)
    elif kind == "picture":
      prims = _picture(rng, size)
    elif kind == "pillar":
      prims = _pillar(rng, place, size[2])
    else:
      prims = _FLOOR_OBJECTS[kind](rng, place)
    inst = len({e.inst for e in entries})
    entries += [Entry(p, C[str(kind)], inst, part, tex)
                for p, part, tex in prims]
  n_lights = int(rng.integers(1, 3))
  el = rng.uniform(np.deg2rad(15), np.deg2rad(60), n_lights)
  az = rng.uniform(0, 2 * np.pi, n_lights)
  lights = np.stack([np.cos(el) * np.sin(az), np.sin(el),
                     np.cos(el) * np.cos(az)], axis=1)
  # A weak light from below stands in for bounce light on the ceiling.
  lights = np.concatenate([lights, [[0.0, -1.0, 0.0]]])
  intensities = np.append(rng.dirichlet(np.ones(n_lights))
                          * rng.uniform(0.55, 0.9), 0.2)
  return Scene(entries, camera, lights, intensities,
               ambient=float(rng.uniform(0.3, 0.45)),
               noise=float(rng.uniform(0.005, 0.02)))
