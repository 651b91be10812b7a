"""Tiny fake NYUDv2 / PASCALContext archives in the public layouts.

Folder and file names follow notes/datasets.md and the reference loaders
(prismformore/Multi-Task-Transformer InvPT/data/{nyud,pascal_context}.py;
SimonVandenhende/Multi-Task-Learning-PyTorch data/{nyud,pascal_context}.py).
Each writer returns the raw arrays it wrote so tests can compute the
expected targets independently of the builder.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import tarfile
import zipfile

import numpy as np
from PIL import Image
import scipy.io

# Person part names of PASCAL-Part (the keys of the reference HUMAN_PART).
PERSON_PARTS = (
    "hair", "head", "lear", "lebrow", "leye", "lfoot", "lhand", "llarm",
    "llleg", "luarm", "luleg", "mouth", "neck", "nose", "rear", "rebrow",
    "reye", "rfoot", "rhand", "rlarm", "rlleg", "ruarm", "ruleg", "torso")


def _png(path: pathlib.Path, arr: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(arr).save(path, format="PNG")


def _jpeg(path: pathlib.Path, arr: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(arr).save(path, format="JPEG", quality=90)


def _npy(path: pathlib.Path, arr: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  np.save(path, arr)


def _split_files(folder: pathlib.Path, train, val) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "train.txt").write_text("".join(f"{i}\n" for i in train))
  (folder / "val.txt").write_text("".join(f"{i}\n" for i in val))


def _image(rng, hw) -> np.ndarray:
  # Smooth content so JPEG round trips are realistic, plus some noise.
  y, x = np.mgrid[:hw[0], :hw[1]]
  base = np.stack([x * 255 // max(hw[1] - 1, 1), y * 255 // max(hw[0] - 1, 1),
                   (x + y) % 256], -1)
  return np.clip(base + rng.integers(0, 30, (*hw, 3)), 0, 255).astype(np.uint8)


def write_nyud(root, *, train=("0001", "0002"), val=("0003",), hw=(8, 10),
               layout: str = "atrc", seed: int = 0,
               smooth: bool = False) -> dict:
  """Writes root/NYUDv2/...; layout 'atrc' (PNGs) or 'mtl' (JPEG + .npy)."""
  rng = np.random.default_rng(seed)
  top = pathlib.Path(root) / "NYUDv2"
  _split_files(top / "gt_sets", train, val)
  raw = {}
  for i in (*train, *val):
    img = _image(rng, hw)
    seg = rng.integers(0, 41, hw).astype(np.uint8)
    depth = rng.uniform(0.5, 9.0, hw).astype(np.float32)
    depth[rng.random(hw) < 0.2] = 0.0
    edge = (rng.random(hw) < 0.3).astype(np.uint8)
    if layout == "atrc":
      _png(top / "images" / f"{i}.png", img)
      normals = _field(rng, hw, 3, smooth)
      _png(top / "normals" / f"{i}.png", normals)
      _png(top / "edge" / f"{i}.png", edge * 255)
    else:
      _jpeg(top / "images" / f"{i}.jpg", img)
      n = rng.normal(size=(*hw, 3)).astype(np.float32)
      normals = n / np.linalg.norm(n, axis=-1, keepdims=True)
      normals[rng.random(hw) < 0.2] = 0.0
      _npy(top / "normals" / f"{i}.npy", normals)
      _npy(top / "edge" / f"{i}.npy", edge.astype(np.float32))
    _png(top / "segmentation" / f"{i}.png", seg)
    _npy(top / "depth" / f"{i}.npy", depth)
    raw[i] = dict(image=img, semseg=seg, depth=depth, normals=normals,
                  edge=edge)
  return raw


def _mat_struct(fields: list[tuple[str, object]]) -> np.ndarray:
  """A 1x1 MATLAB struct as scipy.io.savemat writes it."""
  s = np.empty((1, 1), dtype=[(k, object) for k, _ in fields])
  for k, v in fields:
    s[0, 0][k] = v
  return s


def _struct_row(rows: list[list[tuple[str, object]]],
                names: tuple[str, ...]) -> np.ndarray:
  """A 1xN MATLAB struct array."""
  s = np.empty((1, len(rows)), dtype=[(k, object) for k in names])
  for j, row in enumerate(rows):
    for k, v in row:
      s[0, j][k] = v
  return s


def human_parts_mat(objects: list[dict]) -> dict:
  """PASCAL-Part `anno`: imname, objects(class, class_ind, mask, parts).

  `objects`: dicts with cls (int), mask (uint8 HxW), parts ({name: mask}).
  A person without parts gets an empty 0x0 `parts` field, as in the data.
  """
  rows = []
  for o in objects:
    if o["parts"]:
      parts = _struct_row([[("part_name", n), ("mask", m)]
                           for n, m in o["parts"].items()],
                          ("part_name", "mask"))
    else:
      parts = np.zeros((0, 0))
    rows.append([("class", "person" if o["cls"] == 15 else "other"),
                 ("class_ind", np.array([[o["cls"]]], np.uint8)),
                 ("mask", o["mask"]), ("parts", parts)])
  objs = _struct_row(rows, ("class", "class_ind", "mask", "parts"))
  return {"anno": _mat_struct([("imname", "x"), ("objects", objs)])}


def _blocks(rng, hw, values) -> np.ndarray:
  """Piecewise-constant context labels (regions, like real LabelMaps)."""
  b = max(2, min(hw) // 8)
  coarse = rng.choice(values, size=(-(-hw[0] // b), -(-hw[1] // b)))
  return np.kron(coarse, np.ones((b, b), int))[:hw[0], :hw[1]].astype(
      np.uint16)


def _field(rng, hw, channels: int, smooth: bool) -> np.ndarray:
  """uint8 maps: per-pixel noise, or piecewise-constant regions like the
  real distilled normals/saliency (which compress ~8x faster with zlib)."""
  if not smooth:
    return rng.integers(0, 256, (*hw, channels)).astype(np.uint8)
  b = max(2, min(hw) // 8)
  coarse = rng.integers(0, 256, (-(-hw[0] // b), -(-hw[1] // b), channels))
  return np.kron(coarse, np.ones((b, b, 1), int))[:hw[0], :hw[1]].astype(
      np.uint8)


def _fake_objects(rng, hw, kind: str) -> list[dict]:
  """kind: 'person' (2 people with parts + a dog), 'noparts', 'none'."""
  objs = [{"cls": 12, "mask": (rng.random(hw) < 0.3).astype(np.uint8),
           "parts": {}}]
  if kind == "noparts":
    objs.append({"cls": 15, "mask": (rng.random(hw) < 0.3).astype(np.uint8),
                 "parts": {}})
  if kind == "person":
    for _ in range(2):
      mask = (rng.random(hw) < 0.5).astype(np.uint8)
      names = rng.choice(PERSON_PARTS, size=5, replace=False)
      parts = {str(n): ((rng.random(hw) < 0.25) & (mask > 0)).astype(np.uint8)
               for n in names}
      objs.append({"cls": 15, "mask": mask, "parts": parts})
  return objs


def write_pascal(root, *, train=("2008_000001", "2008_000002"),
                 val=("2008_000003",), hw=(9, 11), voc=("2008_000001",),
                 parts=("person", "noparts", "none"), db_info=None,
                 seed: int = 0, smooth: bool = False) -> dict:
  """Writes root/PASCALContext/...; `voc` ids get semseg/VOC12 labels.

  db_info: optional (nyu_classes, context_classes) dicts written to
  PASCALContext/db_info/ (for the archive fallback).
  """
  rng = np.random.default_rng(seed)
  top = pathlib.Path(root) / "PASCALContext"
  _split_files(top / "ImageSets" / "Context", train, val)
  raw = {}
  for k, i in enumerate((*train, *val)):
    img = _image(rng, hw)
    _jpeg(top / "JPEGImages" / f"{i}.jpg", img)
    seg = rng.integers(0, 21, hw).astype(np.uint8)
    seg[rng.random(hw) < 0.1] = 255
    sub = "VOC12" if i in voc else "pascal-context"
    _png(top / "semseg" / sub / f"{i}.png", seg)
    labelmap = _blocks(rng, hw, [1, 3, 4, 15, 22, 59, 284, 427, 459])
    scipy.io.savemat(_mkparent(top / "pascal-context" / "trainval" /
                               f"{i}.mat"), {"LabelMap": labelmap})
    objs = _fake_objects(rng, hw, parts[k % len(parts)])
    scipy.io.savemat(_mkparent(top / "human_parts" / f"{i}.mat"),
                     human_parts_mat(objs))
    normals = _field(rng, hw, 3, smooth)
    _png(top / "normals_distill" / f"{i}.png", normals)
    sal = _field(rng, hw, 1, smooth)[..., 0]
    _png(top / "sal_distill" / f"{i}.png", sal)
    raw[i] = dict(image=img, semseg=seg, labelmap=labelmap, objects=objs,
                  normals=normals, sal=sal)
  if db_info is not None:
    (top / "db_info").mkdir(parents=True, exist_ok=True)
    for name, d in zip(("nyu_classes.json", "context_classes.json"), db_info):
      (top / "db_info" / name).write_text(json.dumps(d))
  return raw


def poison_nyud_depth(root, image_id: str, value: float,
                      count: int = 3) -> str:
  """Rewrites NYUDv2/depth/<id>.npy with `count` pixels set to `value`
  (NaN, inf, a negative or huge depth); returns the member's name."""
  path = pathlib.Path(root) / "NYUDv2" / "depth" / f"{image_id}.npy"
  depth = np.load(path)
  depth.reshape(-1)[:count] = value
  _npy(path, depth)
  return f"depth/{image_id}.npy"


def _mkparent(path: pathlib.Path) -> str:
  path.parent.mkdir(parents=True, exist_ok=True)
  return os.fspath(path)


def make_tarball(folder, tar_path, *, gz: bool = True) -> str:
  """Packs `folder` (e.g. .../NYUDv2) as <tar_path> with its top folder."""
  folder = pathlib.Path(folder)
  with tarfile.open(tar_path, "w:gz" if gz else "w") as tar:
    tar.add(folder, arcname=folder.name)
  return os.fspath(tar_path)


def add_member(tar_path, name: str, data: bytes = b"x", *,
               link: str | None = None, hard: bool = False) -> None:
  """Appends a crafted member (plain tar only): a file or a link."""
  with tarfile.open(tar_path, "a") as tar:
    info = tarfile.TarInfo(name)
    if link is not None:
      info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
      info.linkname = link
      tar.addfile(info)
    else:
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def write_mtan(root, dataset: str = "nyuv2", *, n_train: int = 2,
               n_val: int = 1, hw=(6, 8), num_classes: int = 13,
               label_folders=("label",), seed: int = 0) -> dict:
  """Writes root/<dataset>/{train,val}/... in MTAN's .npy layout.

  lorenmt/mtan im2im_pred/create_dataset.py and CTAL code_cnn/data/
  create_dataset.py: image float (H, W, 3) in [0, 1]; labels float (H, W)
  with -1 = ignore (one array per folder in `label_folders`, e.g. label_7
  and label_19 for Cityscapes); depth (H, W, 1), 0 = invalid; normals
  (H, W, 3) (NYUv2 only), 0-vector = invalid. Returns {"<split>/<i>":
  arrays}.
  """
  rng = np.random.default_rng(seed)
  top = pathlib.Path(root) / dataset
  raw = {}
  for split, n in (("train", n_train), ("val", n_val)):
    for i in range(n):
      img = rng.random((*hw, 3))  # float64, not multiples of 1/255
      d = dict(image=img)
      for folder in label_folders:
        lab = rng.integers(0, num_classes, hw).astype(np.float32)
        lab[rng.random(hw) < 0.2] = -1.0
        d[folder] = lab
      depth = rng.uniform(0.5, 9.0, (*hw, 1)).astype(np.float32)
      depth[rng.random(hw) < 0.2] = 0.0
      d["depth"] = depth
      if dataset == "nyuv2":
        nrm = rng.normal(size=(*hw, 3)).astype(np.float32)
        nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
        nrm[rng.random(hw) < 0.2] = 0.0
        d["normal"] = nrm
      for folder, arr in d.items():
        _npy(top / split / folder / f"{i}.npy", arr)
      raw[f"{split}/{i}"] = d
  return raw


def make_zip(folder, zip_path, *, extra: dict | None = None) -> str:
  """Packs `folder` as a zip with its top folder (a Dropbox folder
  download); `extra`: crafted {name: bytes or ("symlink", target)}."""
  folder = pathlib.Path(folder)
  with zipfile.ZipFile(zip_path, "w") as z:
    for path in sorted(folder.rglob("*")):
      if path.is_file():
        z.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    for name, data in (extra or {}).items():
      if isinstance(data, tuple):  # a symlink member, as Info-ZIP stores it
        info = zipfile.ZipInfo(name)
        info.external_attr = (0o120777 << 16)
        z.writestr(info, data[1])
      else:
        z.writestr(name, data)
  return os.fspath(zip_path)
