"""PASCAL-Context builder on tiny fake archives (data_builders/pascal_context).

Expected targets are computed here from the raw arrays behind the fake
archive, following InvPT/data/pascal_context.py: its part table, the
Laplacian edge rule, the NYU-compatible normals mask, saliency > 0.5.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
from PIL import Image
import pytest
from skimage import morphology

from data_builders import common
from data_builders import pascal_context as pc
from tests import fake_archives as fa

SHARED_DB = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / (
    "pascal_context_db_info")
FAKE_NYU = {"unknown": 0, "air conditioner": 79, "bag": 55, "zzz": 3}
FAKE_CONTEXT = {"unknown": 1, "air conditioner": 3, "bag": 22,
                "tvmonitor": 427, "other": 459}


def _part_id(name: str) -> int:
  """The 6-part grouping, derived from the part names themselves."""
  if name in ("neck", "torso"):
    return 2
  if name.endswith("uarm"):
    return 3
  if name.endswith(("larm", "hand")):
    return 4
  if name.endswith("uleg"):
    return 5
  if name.endswith(("lleg", "foot")):
    return 6
  return 1  # hair, head, ears, eyebrows, eyes, mouth, nose


def _valid_classes(nyu: dict, context: dict) -> set[int]:
  out = {context["tvmonitor"]}
  for name in nyu:
    if name != "unknown" and name in context:
      out.add(context[name])
  return out


def _edge(labels: np.ndarray) -> np.ndarray:
  p = np.pad(labels.astype(np.float64), 1, mode="reflect")  # reflect-101
  lap = (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]
         - 4 * p[1:-1, 1:-1])
  return morphology.thin(lap != 0).astype(np.uint8)


def _parts(objects, hw) -> np.ndarray:
  out = np.zeros(hw, np.uint8)
  for o in objects:
    if o["cls"] == 15:
      for name, mask in o["parts"].items():
        out[mask > 0] = _part_id(name)
  return out


def _expected(raw: dict, valid: set[int]) -> dict:
  hw = raw["semseg"].shape
  keep = np.isin(raw["labelmap"], list(valid))[..., None]
  return {
      "semseg": raw["semseg"][..., None],
      "human_parts": _parts(raw["objects"], hw)[..., None],
      "normals": np.where(keep, raw["normals"] / 127.5 - 1, 0.0),
      "sal": (raw["sal"] > 127.5).astype(np.uint8)[..., None],
      "edge": _edge(raw["labelmap"])[..., None],
  }


def _check(builder, split, raw, valid, root):
  ds = builder.as_data_source(split)
  assert len(ds) == len(raw)
  for i in range(len(ds)):
    ex = ds[i]
    image_id = ex["id"].decode()
    r = raw[image_id]
    np.testing.assert_array_equal(ex["orig_size"], r["semseg"].shape)
    jpg = pathlib.Path(root, "PASCALContext", "JPEGImages", f"{image_id}.jpg")
    np.testing.assert_allclose(ex["image"].astype(int),
                               np.asarray(Image.open(jpg)).astype(int),
                               atol=1, rtol=0)
    for task, want in _expected(r, valid).items():
      if task not in builder.tasks:
        continue
      got = ex[task]
      assert got.shape == want.shape, task
      if task == "normals":
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
      else:
        np.testing.assert_array_equal(got, want, err_msg=task)
  assert ("labelmap" in ex) == ("edge" in builder.tasks)


def _check_labelmap(builder, split, raw):
  """The boundary benchmark's gt: the LabelMap itself, 459 classes."""
  for ex in builder.as_data_source(split):
    want = raw[ex["id"].decode()]["labelmap"]
    assert ex["labelmap"].dtype == np.uint16
    np.testing.assert_array_equal(ex["labelmap"], want)


def _prepare(tmp_path, manual, config="all", **kw):
  b = pc.make_builder(config, data_dir=str(tmp_path / "tfds"),
                      manual_dir=manual, **kw)
  b.download_and_prepare(file_format="array_record")
  return b


@pytest.mark.skipif(not SHARED_DB.is_dir(), reason=f"{SHARED_DB} absent")
def test_folder_every_target_with_shared_class_lists(tmp_path):
  raw = fa.write_pascal(tmp_path / "m")
  # The VOC12 label wins over a different pascal-context one.
  voc_id = "2008_000001"
  other = np.zeros_like(raw[voc_id]["semseg"])
  Image.fromarray(other).save(tmp_path / "m" / "PASCALContext" / "semseg" /
                              "pascal-context" / f"{voc_id}.png")
  b = _prepare(tmp_path, str(tmp_path / "m"))
  valid = _valid_classes(
      json.loads((SHARED_DB / "nyu_classes.json").read_text()),
      json.loads((SHARED_DB / "context_classes.json").read_text()))
  train = {k: raw[k] for k in ("2008_000001", "2008_000002")}
  _check(b, "train", train, valid, tmp_path / "m")
  _check(b, "validation", {"2008_000003": raw["2008_000003"]}, valid,
         tmp_path / "m")
  _check_labelmap(b, "validation", raw)
  assert max(r["labelmap"].max() for r in raw.values()) > 255  # not uint8
  # The fake data exercises both sides of the mask and all part cases.
  lm = np.concatenate([r["labelmap"].ravel() for r in raw.values()])
  assert 0 < np.isin(lm, list(valid)).mean() < 1
  md = b.info.metadata
  assert md["num_classes"] == {"semseg": 21, "human_parts": 7}
  assert md["edge_max_dist"] == pytest.approx(0.0075)
  assert md["tasks"] == ["semseg", "human_parts", "normals", "sal", "edge"]
  assert len(md["class_names"]["semseg"]) == 21
  assert len(md["class_names"]["human_parts"]) == 7


def test_tarball_with_class_lists_inside_the_archive(tmp_path, monkeypatch):
  monkeypatch.setattr(pc, "DEFAULT_DB_INFO", tmp_path / "nowhere")
  monkeypatch.delenv("MTDENSE_PASCAL_DB_INFO", raising=False)
  raw = fa.write_pascal(tmp_path / "src", db_info=(FAKE_NYU, FAKE_CONTEXT),
                        train=("a", "b", "c"), val=("d",), seed=5)
  manual = tmp_path / "tfds" / "downloads" / "manual"
  manual.mkdir(parents=True)
  fa.make_tarball(tmp_path / "src" / "PASCALContext",
                  manual / "PASCALContext.tar.gz")
  b = pc.make_builder("all", data_dir=str(tmp_path / "tfds"))
  b.download_and_prepare(file_format="array_record")
  valid = _valid_classes(FAKE_NYU, FAKE_CONTEXT)
  assert valid == {3, 22, 427}
  _check(b, "train", {k: raw[k] for k in "abc"}, valid, tmp_path / "src")
  _check(b, "validation", {"d": raw["d"]}, valid, tmp_path / "src")


def test_db_info_dir_override_and_mtcp_config(tmp_path):
  raw = fa.write_pascal(tmp_path / "m", train=("a",), val=("b",))
  db = tmp_path / "db"
  db.mkdir()
  (db / "nyu_classes.json").write_text(json.dumps(FAKE_NYU))
  (db / "context_classes.json").write_text(json.dumps(FAKE_CONTEXT))
  b = _prepare(tmp_path, str(tmp_path / "m"), db_info_dir=str(db))
  _check(b, "train", {"a": raw["a"]}, {3, 22, 427}, tmp_path / "m")
  m = pc.make_builder("mtcp", data_dir=str(tmp_path / "tfds2"),
                      manual_dir=str(tmp_path / "m"))
  m.download_and_prepare(file_format="array_record")
  ex = m.as_data_source("validation")[0]
  assert set(ex) == {"image", "id", "orig_size", "semseg", "human_parts",
                     "sal"}
  _check(m, "validation", {"b": raw["b"]}, set(), tmp_path / "m")


def test_missing_class_lists_are_named(tmp_path, monkeypatch):
  monkeypatch.setattr(pc, "DEFAULT_DB_INFO", tmp_path / "nowhere")
  monkeypatch.delenv("MTDENSE_PASCAL_DB_INFO", raising=False)
  fa.write_pascal(tmp_path / "m", train=("a",), val=("b",))
  with pytest.raises(FileNotFoundError, match="nyu_classes.json"):
    _prepare(tmp_path, str(tmp_path / "m"))


def test_missing_archive_names_file_and_folder(tmp_path):
  (tmp_path / "e").mkdir()
  with pytest.raises(FileNotFoundError) as e:
    _prepare(tmp_path, str(tmp_path / "e"))
  assert "PASCALContext.tar.gz" in str(e.value)
  assert str(tmp_path / "e") in str(e.value)


def _written(data_dir):
  return [f for _, _, fs in os.walk(data_dir) for f in fs
          if "array_record" in f or f == "dataset_info.json"]


def test_split_naming_missing_member_fails_before_writing(tmp_path):
  fa.write_pascal(tmp_path / "m")
  os.remove(tmp_path / "m" / "PASCALContext" / "human_parts" /
            "2008_000003.mat")
  with pytest.raises(FileNotFoundError) as e:
    _prepare(tmp_path, str(tmp_path / "m"), db_info_dir=str(SHARED_DB))
  assert "human_parts/2008_000003.mat" in str(e.value)
  assert not _written(tmp_path / "tfds")


@pytest.mark.parametrize("member", [
    "human_parts/2008_000002.mat", "pascal-context/trainval/2008_000002.mat",
    "JPEGImages/2008_000002.jpg"])
def test_corrupt_member_is_named_and_nothing_looks_prepared(tmp_path,
                                                            member):
  fa.write_pascal(tmp_path / "m", db_info=(FAKE_NYU, FAKE_CONTEXT))
  path = tmp_path / "m" / "PASCALContext" / member
  path.write_bytes(path.read_bytes()[:40])
  with pytest.raises(common.CorruptMemberError) as e:
    _prepare(tmp_path, str(tmp_path / "m"))
  assert member in str(e.value) and "image id 2008_000002" in str(e.value)
  assert not pc.make_builder("all",
                             data_dir=str(tmp_path / "tfds")).is_prepared()
  assert not _written(tmp_path / "tfds")


def test_crafted_tarball_is_refused(tmp_path):
  fa.write_pascal(tmp_path / "m", train=("a",), val=("b",))
  tar = fa.make_tarball(tmp_path / "m" / "PASCALContext",
                        tmp_path / "PASCALContext.tar", gz=False)
  fa.add_member(tar, "PASCALContext/JPEGImages/x/../../../../pwned.jpg")
  with pytest.raises(common.UnsafeArchiveError, match="pwned"):
    _prepare(tmp_path, tar)
  assert not (tmp_path.parent / "pwned.jpg").exists()
  assert not _written(tmp_path / "tfds")


def test_semseg_class_beyond_21_is_refused_with_member_and_id(tmp_path):
  fa.write_pascal(tmp_path / "m", db_info=(FAKE_NYU, FAKE_CONTEXT))
  path = tmp_path / "m" / "PASCALContext" / "semseg" / "pascal-context" / (
      "2008_000003.png")
  seg = np.asarray(Image.open(path)).copy()
  seg[0, 0] = 21  # one class past the 21 (0..20) PASCAL classes
  Image.fromarray(seg).save(path)
  with pytest.raises(common.CorruptMemberError) as e:
    _prepare(tmp_path, str(tmp_path / "m"))
  msg = str(e.value)
  assert msg.startswith("semseg/pascal-context/2008_000003.png (image id "
                        "2008_000003)")
  assert "semseg label has 1 value(s) outside [0, 20] or [255], e.g. [21]" in (
      msg)
  assert not _written(tmp_path / "tfds")
