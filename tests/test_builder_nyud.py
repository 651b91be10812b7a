"""NYUD-v2 builder on tiny fake archives (data_builders/nyud_v2).

Expected targets are computed here from the raw arrays the fake archive was
written from, following InvPT/data/nyud.py (ATRC copy) and
Multi-Task-Learning-PyTorch data/nyud.py (NYUD_MT copy).
"""

from __future__ import annotations

import logging
import os
import pathlib

import numpy as np
from PIL import Image
import pytest

from data_builders import common
from data_builders import nyud_v2
from tests import fake_archives as fa

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _prepare(tmp_path, manual_dir, config="all", **kw):
  b = nyud_v2.make_builder(config, data_dir=str(tmp_path / "tfds"),
                           manual_dir=manual_dir, **kw)
  b.download_and_prepare(file_format="array_record")
  return b


def _expected(raw: dict, layout: str) -> dict:
  seg = raw["semseg"].astype(np.int64)
  if layout == "atrc":
    normals = raw["normals"].astype(np.float64) * 2 / 255 - 1
  else:
    normals = raw["normals"]
  return {"semseg": np.where(seg == 0, 255, seg - 1)[..., None],
          "depth": raw["depth"][..., None], "normals": normals,
          "edge": raw["edge"][..., None]}


def _check_split(builder, split, ids, raw, layout, root):
  ds = builder.as_data_source(split)
  assert len(ds) == len(ids)
  seen = set()
  for i in range(len(ds)):
    ex = ds[i]
    image_id = ex["id"].decode()
    seen.add(image_id)
    ext = ".png" if layout == "atrc" else ".jpg"
    path = pathlib.Path(root) / "NYUDv2" / "images" / f"{image_id}{ext}"
    h, w = raw[image_id]["semseg"].shape
    np.testing.assert_array_equal(ex["orig_size"], [h, w])
    want_img = np.asarray(Image.open(path).convert("RGB"))
    # Lossless PNG: exact; JPEG: same bytes, decoders may differ by 1 level.
    tol = 0 if layout == "atrc" else 1
    np.testing.assert_allclose(ex["image"].astype(int), want_img.astype(int),
                               atol=tol, rtol=0)
    for task, want in _expected(raw[image_id], layout).items():
      got = ex[task]
      assert got.shape == want.shape, task
      if task in ("semseg", "edge"):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, want, err_msg=task)
      else:
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0,
                                   err_msg=task)
  assert seen == set(ids)


def test_folder_atrc_layout_every_target(tmp_path):
  raw = fa.write_nyud(tmp_path / "manual", layout="atrc")
  b = _prepare(tmp_path, str(tmp_path / "manual"))
  _check_split(b, "train", ["0001", "0002"], raw, "atrc", tmp_path / "manual")
  _check_split(b, "validation", ["0003"], raw, "atrc", tmp_path / "manual")
  md = b.info.metadata
  assert md["tasks"] == ["semseg", "depth", "normals", "edge"]
  assert md["num_classes"] == {"semseg": 40}
  assert len(md["class_names"]["semseg"]) == 40
  assert md["edge_max_dist"] == pytest.approx(0.011)
  # A fresh builder sees the prepared dataset and its metadata.
  again = nyud_v2.make_builder(None, data_dir=str(tmp_path / "tfds"))
  assert again.is_prepared()
  assert again.info.metadata["num_classes"] == {"semseg": 40}


def test_tarball_in_tfds_manual_dir_mtl_layout(tmp_path):
  raw = fa.write_nyud(tmp_path / "src", layout="mtl", train=("a1", "a2"),
                      val=("b1", "b2"), seed=3)
  manual = tmp_path / "tfds" / "downloads" / "manual"
  manual.mkdir(parents=True)
  fa.make_tarball(tmp_path / "src" / "NYUDv2", manual / "NYUDv2.tar.gz")
  b = nyud_v2.make_builder("all", data_dir=str(tmp_path / "tfds"))
  b.download_and_prepare(file_format="array_record")
  _check_split(b, "train", ["a1", "a2"], raw, "mtl", tmp_path / "src")
  _check_split(b, "validation", ["b1", "b2"], raw, "mtl", tmp_path / "src")
  # The decompressed temporary tar is gone.
  assert not [f for f in os.listdir(manual) if f != "NYUDv2.tar.gz"]
  assert not os.listdir(tmp_path / "tfds" / "downloads" / "tmp")


def test_original_jpeg_bytes_are_stored(tmp_path):
  fa.write_nyud(tmp_path / "m", layout="mtl", train=("x",), val=("y",))
  b = _prepare(tmp_path, str(tmp_path / "m"), config="mtcp")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = b.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
  want = (tmp_path / "m" / "NYUDv2" / "images" / "x.jpg").read_bytes()
  assert ds[0]["image"] == want
  assert set(ds[0]) == {"image", "id", "orig_size", "semseg", "depth",
                        "normals"}


@pytest.mark.parametrize("hw,layout", [((448, 576), "atrc"),
                                       ((480, 640), "mtl")])
def test_both_public_sizes(tmp_path, caplog, hw, layout):
  raw = fa.write_nyud(tmp_path / "m", layout=layout, hw=hw, train=("t",),
                      val=("v",))
  fa.make_tarball(tmp_path / "m" / "NYUDv2", tmp_path / "NYUDv2.tar.gz")
  with caplog.at_level(logging.INFO, logger="data_builders.nyud_v2"):
    b = _prepare(tmp_path, str(tmp_path / "NYUDv2.tar.gz"))
  assert f"{hw[0]}x{hw[1]}" in caplog.text
  _check_split(b, "train", ["t"], raw, layout, tmp_path / "m")
  _check_split(b, "validation", ["v"], raw, layout, tmp_path / "m")


def test_missing_archive_names_file_and_folder(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError) as e:
    _prepare(tmp_path, str(empty))
  assert "NYUDv2.tar.gz" in str(e.value) and str(empty) in str(e.value)


def _written_files(data_dir):
  return [os.path.join(d, f) for d, _, fs in os.walk(data_dir) for f in fs
          if "array_record" in f or f == "dataset_info.json"]


def test_split_naming_missing_image_fails_before_writing(tmp_path):
  fa.write_nyud(tmp_path / "m", train=("0001", "0002", "0004"))
  os.remove(tmp_path / "m" / "NYUDv2" / "images" / "0004.png")
  with pytest.raises(FileNotFoundError) as e:
    _prepare(tmp_path, str(tmp_path / "m"))
  assert "0004" in str(e.value) and "images/0004" in str(e.value)
  assert not _written_files(tmp_path / "tfds")


@pytest.mark.parametrize("member", ["depth/0002.npy", "segmentation/0002.png"])
def test_corrupt_member_interrupts_without_looking_complete(tmp_path, member):
  fa.write_nyud(tmp_path / "m", train=("0001", "0002"))
  (tmp_path / "m" / "NYUDv2" / member).write_bytes(b"not a valid file")
  with pytest.raises(common.CorruptMemberError) as e:
    _prepare(tmp_path, str(tmp_path / "m"))
  assert member in str(e.value) and "image id 0002" in str(e.value)
  fresh = nyud_v2.make_builder("all", data_dir=str(tmp_path / "tfds"))
  assert not fresh.is_prepared()
  assert not _written_files(tmp_path / "tfds")


def test_generator_raising_midway_leaves_nothing_complete(tmp_path,
                                                          monkeypatch):
  fa.write_nyud(tmp_path / "m", train=("0001", "0002", "0005"))
  calls = []
  orig = nyud_v2.Builder._example

  def flaky(self, image_id):
    calls.append(image_id)
    if len(calls) == 2:
      raise KeyboardInterrupt("simulated interruption")
    return orig(self, image_id)

  monkeypatch.setattr(nyud_v2.Builder, "_example", flaky)
  with pytest.raises(KeyboardInterrupt):
    _prepare(tmp_path, str(tmp_path / "m"))
  monkeypatch.setattr(nyud_v2.Builder, "_example", orig)
  fresh = nyud_v2.make_builder("all", data_dir=str(tmp_path / "tfds"))
  assert not fresh.is_prepared()
  assert not _written_files(tmp_path / "tfds")
  # A later preparation succeeds.
  _prepare(tmp_path, str(tmp_path / "m"))
  assert nyud_v2.make_builder("all",
                              data_dir=str(tmp_path / "tfds")).is_prepared()


@pytest.mark.parametrize("name,link,hard", [
    ("../evil.txt", None, False),
    ("/tmp/mtdense_evil_abs.txt", None, False),
    ("NYUDv2/images/evil.png", "/etc/passwd", False),
    ("NYUDv2/images/evil2.png", "../../../evil_link", False),
    ("NYUDv2/images/evil3.png", "../../evil_hard", True),
])
def test_unsafe_members_are_refused(tmp_path, name, link, hard):
  fa.write_nyud(tmp_path / "m", train=("0001",), val=("0003",))
  tar = fa.make_tarball(tmp_path / "m" / "NYUDv2", tmp_path / "NYUDv2.tar",
                        gz=False)
  fa.add_member(tar, name, b"evil", link=link, hard=hard)
  before = set(os.listdir(tmp_path))
  with pytest.raises(common.UnsafeArchiveError) as e:
    _prepare(tmp_path, tar)
  assert name in str(e.value)
  assert not os.path.exists("/tmp/mtdense_evil_abs.txt")
  assert set(os.listdir(tmp_path)) - before <= {"tfds"}
  assert not _written_files(tmp_path / "tfds")


def test_folder_symlink_leaving_the_folder_is_not_followed(tmp_path):
  fa.write_nyud(tmp_path / "m", train=("0001",), val=("0003",))
  outside = tmp_path / "outside.npy"
  np.save(outside, np.zeros((8, 10), np.float32))
  target = tmp_path / "m" / "NYUDv2" / "depth" / "0001.npy"
  os.remove(target)
  os.symlink(outside, target)
  with pytest.raises(common.UnsafeArchiveError):
    _prepare(tmp_path, str(tmp_path / "m"))


def test_labels_of_another_size_are_resized_to_the_image(tmp_path):
  raw = fa.write_nyud(tmp_path / "m", train=("0001",), val=("0003",))
  top = tmp_path / "m" / "NYUDv2"
  rng = np.random.default_rng(7)
  big_seg = rng.integers(0, 41, (16, 20)).astype(np.uint8)
  big_depth = rng.uniform(0, 5, (16, 20)).astype(np.float32)
  Image.fromarray(big_seg).save(top / "segmentation" / "0001.png")
  np.save(top / "depth" / "0001.npy", big_depth)
  b = _prepare(tmp_path, str(tmp_path / "m"))
  ex = b.as_data_source("train")[0]
  # Nearest neighbour at an exact factor 2 picks the even rows/columns.
  seg = big_seg[::2, ::2].astype(int)
  np.testing.assert_array_equal(ex["semseg"][..., 0],
                                np.where(seg == 0, 255, seg - 1))
  np.testing.assert_array_equal(ex["depth"][..., 0], big_depth[::2, ::2])
  assert ex["normals"].shape == (*raw["0001"]["semseg"].shape, 3)


def test_inspect_cli_reports_sizes_stats_and_writes_grid(tmp_path):
  from mtdense_jax.data import inspect  # pylint: disable=g-import-not-at-top
  raw = fa.write_nyud(tmp_path / "m", train=("0001", "0002"), val=("0003",))
  out = tmp_path / "grid.png"
  report = inspect.main([
      "--dataset", "nyud_v2", "--data_dir", str(tmp_path / "tfds"),
      "--manual_dir", str(tmp_path / "m"), "--prepare", "--out", str(out)])
  assert "split train: 2 examples" in report
  assert "split validation: 1 examples" in report
  depth = np.stack([raw[i]["depth"] for i in ("0001", "0002")])
  share = (depth == 0).mean()
  assert f"depth: invalid share {share:.3f}" in report
  edge = np.stack([raw[i]["edge"] for i in ("0001", "0002")]).mean()
  assert f"edge: positive share {edge:.4f}" in report
  img = np.asarray(Image.open(out))
  assert img.shape == (3 * 160, 5 * 200, 3)  # 3 rows; image + 4 tasks


def test_truncated_tarball_is_reported_and_cleaned_up(tmp_path):
  fa.write_nyud(tmp_path / "m", train=("0001",), val=("0003",))
  tar = pathlib.Path(fa.make_tarball(tmp_path / "m" / "NYUDv2",
                                     tmp_path / "NYUDv2.tar.gz"))
  tar.write_bytes(tar.read_bytes()[:200])
  with pytest.raises(ValueError, match="NYUDv2.tar.gz is not a readable"):
    _prepare(tmp_path, str(tar))
  assert not os.listdir(tmp_path / "tfds" / "downloads" / "tmp")


@pytest.mark.parametrize("value,problem", [
    (np.nan, "depth label holds NaN at 3 value(s)"),
    (np.inf, "depth label holds inf at 3 value(s)"),
    (-2.0, "depth label has 3 value(s) outside [0, 1000]"),
])
def test_bad_depth_values_in_a_tarball_stop_the_build(tmp_path, value,
                                                      problem):
  fa.write_nyud(tmp_path / "m", train=("0001", "0002"))
  member = fa.poison_nyud_depth(tmp_path / "m", "0002", value)
  tar = fa.make_tarball(tmp_path / "m" / "NYUDv2", tmp_path / "NYUDv2.tar.gz")
  with pytest.raises(common.CorruptMemberError) as e:
    _prepare(tmp_path, tar)
  msg = str(e.value)
  assert "\n" not in msg
  assert msg.startswith(f"{member} (image id 0002) in {tar}:NYUDv2: ")
  assert problem in msg
  assert not _written_files(tmp_path / "tfds")


def test_semseg_class_beyond_the_class_list_is_refused(tmp_path):
  fa.write_nyud(tmp_path / "m", train=("0001",), val=("0003",))
  path = tmp_path / "m" / "NYUDv2" / "segmentation" / "0003.png"
  seg = np.asarray(Image.open(path)).copy()
  seg[0, :2] = 45  # raw 45 -> class 44 of 40
  Image.fromarray(seg).save(path)
  with pytest.raises(common.CorruptMemberError,
                     match=r"segmentation/0003.png \(image id 0003\).*semseg "
                           r"label has 2 value\(s\) outside \[0, 39\] or "
                           r"\[255\], e.g. \[44\]"):
    _prepare(tmp_path, str(tmp_path / "m"))


@pytest.mark.parametrize("case", ["nan_depth", "corrupt_member"])
def test_launch_reports_a_bad_member_in_one_line(tmp_path, case):
  """The CLI ends with the one-line message and a non-zero exit."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  fa.write_nyud(tmp_path / "m", train=("0001", "0002"))
  if case == "nan_depth":
    fa.poison_nyud_depth(tmp_path / "m", "0002", np.nan)
    want = ("Error: depth/0002.npy (image id 0002) in ",
            "depth label holds NaN at 3 value(s)")
  else:
    (tmp_path / "m" / "NYUDv2" / "segmentation" / "0002.png").write_bytes(
        b"not a png")
    want = ("Error: segmentation/0002.png (image id 0002) is corrupt or "
            "unreadable: UnidentifiedImageError: ", "")
  tar = fa.make_tarball(tmp_path / "m" / "NYUDv2", tmp_path / "NYUDv2.tar.gz")
  root = pathlib.Path(__file__).resolve().parents[1]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(
      [sys.executable, str(root / "launch.py"),
       f"--config={root / 'configs' / 'nyud_invpt.py'}",
       f"--workdir={tmp_path / 'w'}",
       f"--config.data.data_dir={tmp_path / 'tfds'}",
       f"--config.data.manual_dir={tar}"],
      capture_output=True, text=True, timeout=240, cwd=root,
      env={**env, "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"})
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(want[0]), last
  assert want[1] in last
