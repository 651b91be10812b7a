"""Vectorised numpy ray caster producing an image and every dense target.

One primary ray per pixel through the pixel centre; a z-buffer over the
scene's primitives (scene.py) picks the visible surface. All targets come
from that single cast, so depth, normals and labels are consistent by
construction.

Conventions (documented for the builder and the tasks):
* depth: z-depth along the optical axis in metres (not the ray length);
  0 = invalid (grazing-angle surfaces, like a Kinect's dropouts).
* normals: unit vectors in camera coordinates with x to the right, y up and
  z towards the camera (a wall facing the camera is (0, 0, 1), the floor
  seen by a level camera is (0, 1, 0)); a horizontal image flip negates x.
  All-zero = invalid.
* edge: 1 on the pixel before (left of / above) every change of instance id
  to the right or below neighbour: a 1-pixel-thin boundary.
* sal: 1 on the non-room objects (semantic class >= 3).
* parts: mannequin parts 1..6 (PASCAL human-part ids), 0 elsewhere.
* image: procedural albedo, Lambertian shading from one or two directional
  lights plus a weak light from below and an ambient term, cast shadows of
  the main light (objects only), vignetting and Gaussian sensor noise.

Geometric buffers (`BUFFERS`), besides the targets above, from which a task
the dataset does not label derives its own (``Task.scene_label``):
* points: (H, W, 3) float32 world coordinates of the visible surface in
  metres: x and z horizontal, y up, the floor is y = 0; 0 where nothing is
  hit.
* valid: (H, W) bool, a surface is hit at a usable angle (depth > 0).
* instance: (H, W) int32 object id (-1 = none); semseg: (H, W) class id
  (scene.CLASS_NAMES); intrinsics: (focal, cx, cy) in pixels.
"""

from __future__ import annotations

import numpy as np

from data_builders.synthetic_scenes import scene as scene_lib

# Every key `render` returns (targets and geometric buffers).
BUFFERS = ("image", "depth", "normals", "semseg", "instance", "human_parts",
           "sal", "edge", "intrinsics", "points", "valid")
# Surfaces seen at a cosine below this get depth 0 ("sensor dropout").
GRAZING_COS = 0.03


def intrinsics(camera: scene_lib.Camera, height: int,
               width: int) -> tuple[float, float, float]:
  """(focal, cx, cy) in pixels. The horizontal field of view belongs to the
  scene, so one scene rendered at two sizes shows the same view."""
  focal = (width / 2) / np.tan(camera.hfov / 2)
  return focal, width / 2, height / 2


def camera_rays(camera: scene_lib.Camera, height: int,
                width: int) -> np.ndarray:
  """World ray directions (H*W, 3) scaled to unit camera z (t = z-depth)."""
  focal, cx, cy = intrinsics(camera, height, width)
  v, u = np.mgrid[0:height, 0:width] + 0.5
  d = np.stack([(u - cx) / focal, (v - cy) / focal,
                np.ones_like(u)], axis=-1).reshape(-1, 3)
  return d @ camera.rot.T


def _hash(i: np.ndarray) -> np.ndarray:
  """Deterministic pseudo-random value in [0, 1) per integer cell."""
  return np.modf(np.abs(np.sin(i * 12.9898 + 78.233) * 43758.5453))[0]


def albedo(tex: scene_lib.Texture, q: np.ndarray) -> np.ndarray:
  """Surface colour (n, 3) in [0, 1] at texture coordinates q (n, 3)."""
  waves = np.sin(q @ tex.waves.T + tex.phases)  # smooth low-freq variation
  shade = 1.0 + 0.05 * waves.mean(axis=1, keepdims=True)
  if tex.kind == "plain":
    col = tex.c0 * shade
  elif tex.kind == "checker":
    cells = np.floor(q[:, [0, 2]] / tex.scale + 0.5).sum(axis=1)
    col = np.where((cells % 2 == 0)[:, None], tex.c0, tex.c1) * shade
  elif tex.kind == "planks":
    a = tex.axis
    pos = q[:, a] / tex.scale
    idx = np.floor(pos)
    along = q.sum(axis=1) - q[:, a]
    grain = 0.06 * np.sin(25.0 * along + 6.3 * _hash(idx + 0.5))
    gap = np.where(pos - idx < 0.04, 0.6, 1.0)
    col = tex.c0 * ((1.0 + 0.3 * (_hash(idx) - 0.5) + grain) * gap)[:, None]
  elif tex.kind == "bands":
    on = np.sin(2 * np.pi * q[:, tex.axis] / tex.scale + tex.phases[0]) > 0.3
    col = np.where(on[:, None], tex.c1, tex.c0) * shade
  elif tex.kind == "blobs":
    f = np.sin(q @ tex.waves.T * tex.scale / 3 + tex.phases)
    mix = (0.5 + 0.5 * f[:, :1])
    col = tex.c0 * mix + tex.c1 * (1 - mix) + 0.15 * f[:, 1:2]
  else:
    raise ValueError(f"unknown texture {tex.kind!r}")
  return np.clip(col, 0.0, 1.0)


def _cast(scene: scene_lib.Scene, dirs: np.ndarray):
  """Z-buffer over primitives: (t, index of the visible primitive)."""
  best_t = np.full(len(dirs), np.inf)
  best = np.full(len(dirs), -1)
  for k, entry in enumerate(scene.entries):
    t = entry.prim.hit(scene.camera.origin, dirs)
    closer = t < best_t
    best_t = np.where(closer, t, best_t)
    best = np.where(closer, k, best)
  return best_t, best


def _surfaces(scene, dirs, best_t, best):
  """World normals and albedo of the visible surface of every pixel."""
  normals = np.zeros_like(dirs)
  colour = np.zeros_like(dirs)
  points = scene.camera.origin + np.where(best >= 0, best_t, 0)[:, None] * dirs
  for k in np.unique(best[best >= 0]):
    sel = best == k
    entry = scene.entries[k]
    normals[sel] = entry.prim.normal(points[sel])
    colour[sel] = albedo(entry.tex, entry.prim.local(points[sel]))
  return points, normals, colour


def _shadowed(scene, points, normals, light) -> np.ndarray:
  """True where an object blocks the directional `light` (room planes are
  ignored: the "sun" shines through them)."""
  lit = normals @ light > 0
  origins = points[lit] + 1e-4 * normals[lit]
  dirs = np.broadcast_to(light, origins.shape)
  blocked = np.zeros(len(origins), bool)
  for entry in scene.entries:
    if entry.cls >= scene_lib.NUM_ROOM_CLASSES:
      blocked |= np.isfinite(entry.prim.hit(origins, dirs))
  out = np.zeros(len(points), bool)
  out[lit] = blocked
  return out


def _shade(scene, points, normals, colour, height, width,
           rng) -> np.ndarray:
  """Lambertian shading with the main light's cast shadows, vignetting and
  sensor noise; uint8 RGB."""
  direct = np.clip(normals @ scene.lights.T, 0.0, None) * scene.intensities
  direct[_shadowed(scene, points, normals, scene.lights[0]), 0] = 0.0
  lam = direct.sum(axis=1)
  img = colour * (scene.ambient + lam)[:, None]
  v, u = np.mgrid[0:height, 0:width] + 0.5
  r2 = ((u - width / 2) ** 2 + (v - height / 2) ** 2) / (
      (width / 2) ** 2 + (height / 2) ** 2)
  img = img.reshape(height, width, 3) * (1.0 - 0.25 * r2)[..., None]
  img = img + rng.normal(0.0, scene.noise, img.shape)
  return np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


def render(scene: scene_lib.Scene, height: int, width: int,
           noise_seed: int | np.random.SeedSequence = 0
           ) -> dict[str, np.ndarray]:
  """Ray-casts `scene`; returns the image, every target and the intrinsics."""
  dirs = camera_rays(scene.camera, height, width)
  best_t, best = _cast(scene, dirs)
  hit = best >= 0
  points, normals_w, colour = _surfaces(scene, dirs, best_t, best)
  image = _shade(scene, points, normals_w, colour, height, width,
                 np.random.default_rng(noise_seed))
  ray_len = np.linalg.norm(dirs, axis=1)
  facing = -np.einsum("ij,ij->i", normals_w, dirs) / ray_len
  valid = hit & (facing > GRAZING_COS)
  # World -> camera (x right, y down, z forward) -> (x right, y up, z back).
  n_cam = (normals_w @ scene.camera.rot) * np.array([1.0, -1.0, -1.0])
  n_cam = np.where(valid[:, None], n_cam, 0.0)
  depth = np.where(valid, best_t, 0.0)

  table = lambda attr, miss: np.array(
      [getattr(e, attr) for e in scene.entries] + [miss])
  cls = table("cls", 255)[best].reshape(height, width)
  inst = table("inst", -1)[best].reshape(height, width)
  parts = table("part", 0)[best].reshape(height, width)
  edge = np.zeros((height, width), bool)
  edge[:, :-1] |= inst[:, :-1] != inst[:, 1:]
  edge[:-1, :] |= inst[:-1, :] != inst[1:, :]
  sal = (cls >= scene_lib.NUM_ROOM_CLASSES) & (cls != 255)
  focal, cx, cy = intrinsics(scene.camera, height, width)
  return {
      "image": image,
      "depth": depth.reshape(height, width).astype(np.float32),
      "normals": n_cam.reshape(height, width, 3).astype(np.float32),
      "semseg": cls.astype(np.uint8),
      "instance": inst.astype(np.int32),
      "human_parts": parts.astype(np.uint8),
      "sal": sal.astype(np.uint8),
      "edge": edge.astype(np.uint8),
      "intrinsics": np.array([focal, cx, cy]),
      "points": np.where(valid[:, None], points, 0.0).reshape(
          height, width, 3).astype(np.float32),
      "valid": valid.reshape(height, width),
  }
