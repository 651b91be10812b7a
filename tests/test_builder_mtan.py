"""MTAN-preprocessed NYUv2 / Cityscapes builders on tiny fake releases.

Expected targets are computed here from the raw arrays the fake release was
written from, following the CTAL CNN loader (Dimitri-Sinodinos/CTAL
code_cnn/data/create_dataset.py): semseg -1 = ignore (stored 255 here),
depth 0 = invalid, normals 0-vector = invalid, images float in [0, 1].
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_builders import common
from data_builders import mtan_cityscapes
from data_builders import mtan_nyuv2
from mtdense_jax import registry
from mtdense_jax.data import pipeline
from mtdense_jax.data import sources
from tests import fake_archives as fa

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

HW = (6, 8)


def _prepare(module, tmp_path, manual_dir, config=None):
  b = module.make_builder(config, data_dir=str(tmp_path / "tfds"),
                          manual_dir=manual_dir)
  b.download_and_prepare(file_format="array_record")
  return b


def _semseg(raw):
  return np.where(raw == -1, 255, raw).astype(np.uint8)[..., None]


def _check(builder, raw, label_folder, tasks):
  for split, folder in (("train", "train"), ("validation", "val")):
    ids = sorted(k for k in raw if k.startswith(folder + "/"))
    ds = builder.as_data_source(split)
    assert len(ds) == len(ids)
    seen = set()
    for ex in ds:
      image_id = ex["id"].decode()
      seen.add(image_id)
      r = raw[image_id]
      np.testing.assert_array_equal(ex["orig_size"], HW)
      want_img = np.rint(r["image"] * 255)
      np.testing.assert_array_equal(ex["image"], want_img.astype(np.uint8))
      assert set(ex) == {"image", "id", "orig_size", *tasks}
      got = ex["semseg"]
      assert got.dtype == np.uint8
      np.testing.assert_array_equal(got, _semseg(r[label_folder]))
      np.testing.assert_array_equal(ex["depth"], r["depth"])
      if "normals" in tasks:
        np.testing.assert_array_equal(ex["normals"], r["normal"])
    assert seen == set(ids)


def test_nyuv2_folder_every_target_and_metadata(tmp_path):
  raw = fa.write_mtan(tmp_path / "m", "nyuv2", n_train=3, n_val=2, hw=HW)
  b = _prepare(mtan_nyuv2, tmp_path, str(tmp_path / "m"))
  _check(b, raw, "label", ("semseg", "depth", "normals"))
  md = b.info.metadata
  assert md["tasks"] == ["semseg", "depth", "normals"]
  assert md["num_classes"] == {"semseg": 13}
  assert md["class_names"]["semseg"][0] == "bed"
  assert len(md["class_names"]["semseg"]) == 13
  # Nobody mistakes it for the 40-class benchmark.
  assert "NOT the 40-class" in b.info.description


@pytest.mark.parametrize("config,folder,k", [("19class", "label_19", 19),
                                             ("7class", "label_7", 7)])
def test_cityscapes_tarball_in_tfds_manual_dir(tmp_path, config, folder, k):
  raw = fa.write_mtan(tmp_path / "src", "cityscapes", hw=HW,
                      num_classes=7, label_folders=("label_7", "label_19"))
  manual = tmp_path / "tfds" / "downloads" / "manual"
  manual.mkdir(parents=True)
  fa.make_tarball(tmp_path / "src" / "cityscapes",
                  manual / "cityscapes.tar.gz")
  b = _prepare(mtan_cityscapes, tmp_path, None, config)
  _check(b, raw, folder, ("semseg", "depth"))
  assert b.info.metadata["num_classes"] == {"semseg": k}
  assert not os.listdir(tmp_path / "tfds" / "downloads" / "tmp")


def test_registered_by_name_and_read_by_the_pipeline(tmp_path):
  """Configs say data.name = "mtan_nyuv2"; the prepared files are read by
  tfds.data_source and by our eval pipeline (labels with their fill)."""
  assert {"mtan_nyuv2", "mtan_cityscapes"} <= set(registry.available(
      "dataset"))
  raw = fa.write_mtan(tmp_path / "m", "nyuv2", n_train=2, n_val=3, hw=HW)
  # CTAL's CNN loader feeds the [0, 1] images unstandardised.
  cfg = ml_collections.ConfigDict(dict(
      name="mtan_nyuv2", config=None, data_dir=str(tmp_path / "tfds"),
      manual_dir=str(tmp_path / "m"), image_size=HW, read_threads=1,
      prefetch=1, image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0)))
  data = pipeline.make_eval_iter(cfg, ["semseg", "depth", "normals"],
                                 global_batch_size=2)
  batches = list(data)
  assert len(batches) == 2 and data.num_examples == 3
  b0 = batches[0]
  assert b0["image"].shape == (2, *HW, 3) and b0["image"].dtype == np.float32
  # The pipeline reads the stored order (TFDS shuffles keys when writing).
  first = sources.get_builder(cfg).as_data_source("validation")[0]["id"]
  r = raw[first.decode()]
  np.testing.assert_allclose(b0["image"][0], np.rint(r["image"] * 255) / 255,
                             rtol=0, atol=1e-6)
  np.testing.assert_allclose(b0["image"][0], r["image"], rtol=0,
                             atol=0.5 / 255 + 1e-6)
  np.testing.assert_array_equal(b0["semseg"][0], _semseg(r["label"]))
  np.testing.assert_array_equal(b0["depth"][0],
                                np.where(r["depth"] == 0, 255, r["depth"]))
  zero = (r["normal"] == 0).all(-1, keepdims=True)
  np.testing.assert_array_equal(b0["normals"][0],
                                np.where(zero, 255, r["normal"]))
  assert list(batches[1]["valid"]) == [True, False]
  # Reading the prepared files needs no builder code.
  ds = tfds.data_source("mtan_nyuv2", split="validation",
                        data_dir=str(tmp_path / "tfds"))
  assert len(ds) == 3 and ds[0]["semseg"].shape == (*HW, 1)


@pytest.mark.parametrize("module,archive,folder", [
    (mtan_nyuv2, "nyuv2.zip", "nyuv2/"),
    (mtan_cityscapes, "cityscapes.zip", "cityscapes/"),
])
def test_missing_release_says_where_to_put_what(tmp_path, module, archive,
                                                folder):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError) as e:
    _prepare(module, tmp_path, str(empty))
  msg = str(e.value)
  assert archive in msg and folder in msg and str(empty) in msg
  assert "\n" not in msg


def _written(data_dir):
  return [os.path.join(d, f) for d, _, fs in os.walk(data_dir) for f in fs
          if "array_record" in f or f == "dataset_info.json"]


@pytest.mark.parametrize("member", ["train/depth/1.npy", "val/label/0.npy",
                                    "train/image/0.npy"])
def test_corrupt_npy_names_the_file(tmp_path, member):
  fa.write_mtan(tmp_path / "m", "nyuv2", hw=HW)
  (tmp_path / "m" / "nyuv2" / member).write_bytes(b"not an npy file")
  with pytest.raises(common.CorruptMemberError) as e:
    _prepare(mtan_nyuv2, tmp_path, str(tmp_path / "m"))
  image_id = member.split("/")[0] + "/" + member.rsplit("/", 1)[1][:-4]
  assert str(e.value).startswith(f"{member} (image id {image_id}) is corrupt")
  assert not _written(tmp_path / "tfds")


def test_gap_in_the_indices_fails_before_writing(tmp_path):
  fa.write_mtan(tmp_path / "m", "nyuv2", n_train=4, hw=HW)
  os.remove(tmp_path / "m" / "nyuv2" / "train" / "image" / "2.npy")
  with pytest.raises(FileNotFoundError,
                     match="train/image/2.npy is missing .* but "
                           "train/image/3.npy exists"):
    _prepare(mtan_nyuv2, tmp_path, str(tmp_path / "m"))
  assert not _written(tmp_path / "tfds")


def test_missing_member_fails_before_writing(tmp_path):
  fa.write_mtan(tmp_path / "m", "nyuv2", n_train=3, hw=HW)
  os.remove(tmp_path / "m" / "nyuv2" / "train" / "normal" / "2.npy")
  with pytest.raises(FileNotFoundError, match="train/normal/2.npy"):
    _prepare(mtan_nyuv2, tmp_path, str(tmp_path / "m"))
  assert not _written(tmp_path / "tfds")


@pytest.mark.parametrize("case,match", [
    ("class_13", r"val/label/0.npy \(image id val/0\) in .*semseg label has "
                 r"1 value\(s\) outside \[0, 12\] or \[255\], e.g. \[13\]"),
    ("fraction", r"val/label/0.npy \(image id val/0\) is corrupt.*1 "
                 r"non-integer value\(s\), e.g. \[2.5\]"),
    ("image_range", r"val/image/0.npy \(image id val/0\) is corrupt.*"
                    r"outside \[0, 1\]"),
    ("size", r"val/depth/0.npy \(image id val/0\) in .*size 5x8 differs "
             r"from the image's 6x8"),
])
def test_bad_values_are_refused_naming_the_member(tmp_path, case, match):
  fa.write_mtan(tmp_path / "m", "nyuv2", hw=HW)
  val = tmp_path / "m" / "nyuv2" / "val"
  if case in ("class_13", "fraction"):
    lab = np.load(val / "label" / "0.npy")
    lab[0, 0] = 13 if case == "class_13" else 2.5
    np.save(val / "label" / "0.npy", lab)
  elif case == "image_range":
    np.save(val / "image" / "0.npy", np.full((*HW, 3), 255.0))
  else:
    np.save(val / "depth" / "0.npy", np.ones((5, 8, 1), np.float32))
  with pytest.raises(common.CorruptMemberError, match=match):
    _prepare(mtan_nyuv2, tmp_path, str(tmp_path / "m"))
  assert not _written(tmp_path / "tfds")


def test_unsafe_member_is_refused(tmp_path):
  fa.write_mtan(tmp_path / "m", "nyuv2", hw=HW)
  tar = fa.make_tarball(tmp_path / "m" / "nyuv2", tmp_path / "nyuv2.tar",
                        gz=False)
  fa.add_member(tar, "nyuv2/train/image/9.npy", link="../../../../etc/passwd")
  with pytest.raises(common.UnsafeArchiveError, match="nyuv2/train/image/9"):
    _prepare(mtan_nyuv2, tmp_path, tar)


def test_nyuv2_zip_in_the_manual_dir(tmp_path):
  raw = fa.write_mtan(tmp_path / "src", "nyuv2", hw=HW, seed=4)
  manual = tmp_path / "manual"
  manual.mkdir()
  fa.make_zip(tmp_path / "src" / "nyuv2", manual / "nyuv2.zip")
  b = _prepare(mtan_nyuv2, tmp_path, str(manual))
  _check(b, raw, "label", ("semseg", "depth", "normals"))
  assert os.listdir(manual) == ["nyuv2.zip"]


@pytest.mark.parametrize("name,data", [
    ("../evil.npy", b"x"),
    ("/tmp/mtdense_evil_abs.npy", b"x"),
    ("nyuv2/train/image/9.npy", ("symlink", "/etc/passwd")),
])
def test_unsafe_zip_members_are_refused(tmp_path, name, data):
  fa.write_mtan(tmp_path / "m", "nyuv2", hw=HW)
  z = fa.make_zip(tmp_path / "m" / "nyuv2", tmp_path / "nyuv2.zip",
                  extra={name: data})
  with pytest.raises(common.UnsafeArchiveError) as e:
    _prepare(mtan_nyuv2, tmp_path, z)
  assert name in str(e.value)
  assert not os.path.exists("/tmp/mtdense_evil_abs.npy")
  assert not _written(tmp_path / "tfds")


def test_truncated_zip_is_reported(tmp_path):
  fa.write_mtan(tmp_path / "m", "nyuv2", hw=HW)
  z = fa.make_zip(tmp_path / "m" / "nyuv2", tmp_path / "nyuv2.zip")
  data = open(z, "rb").read()
  with open(z, "wb") as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(ValueError, match="nyuv2.zip is not a readable zip archive"):
    _prepare(mtan_nyuv2, tmp_path, z)


def test_image_statistics_reach_predictor_and_config_check():
  from mtdense_jax import config_check  # pylint: disable=g-import-not-at-top
  from mtdense_jax.data import transforms as T  # pylint: disable=g-import-not-at-top
  from mtdense_jax.predict import geometry  # pylint: disable=g-import-not-at-top
  from tests.conftest import REPO  # pylint: disable=g-import-not-at-top
  img = np.random.default_rng(0).integers(0, 256, (*HW, 3)).astype(np.uint8)
  unit = T.Normalize.for_config(ml_collections.ConfigDict(dict(
      image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0))))
  x, _ = geometry.preprocess(img, HW, normalize=unit)
  np.testing.assert_allclose(x, img / 255.0, rtol=0, atol=1e-6)
  x, _ = geometry.preprocess(img, HW)  # ImageNet's by default
  mean, std = np.array(T.IMAGENET_MEAN), np.array(T.IMAGENET_STD)
  np.testing.assert_allclose(x, (img / 255.0 - mean) / std, atol=1e-5)
  cfg = config_check.load_config_file(
      str(REPO / "configs" / "synthetic_baseline.py") + ":runlocal")
  assert tuple(cfg.data.image_std) == T.IMAGENET_STD
  cfg.data.image_std = (1.0, 0.0, 1.0)
  with pytest.raises(config_check.ConfigError) as e:
    config_check.validate(cfg)
  assert any(line.startswith("config.data.image_std=(1.0, 0.0, 1.0): must "
                             "be three numbers > 0") for line in
             e.value.lines()), e.value.lines()
