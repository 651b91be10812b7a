"""Inference with TaskPrompter, a model tied to one token grid.

TaskPrompter's pos_embed and channel-branch layers are sized by the token
grid of the image size it was built for, so it cannot take another size;
the predictor fits every image into that size (aspect kept, centred pad)
and maps each prediction back. Checked on a 4-step run of
configs/synthetic_taskprompter.py:runlocal (32x48) and on a released-style
PASCAL checkpoint (the golden case's key tree, a 128x64 portrait grid)
converted with ``mtdense_jax.convert``: the CLI writes every task at each
non-square image's own size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
import pytest
import torch

from mtdense_jax import config_check
from mtdense_jax import predict
from mtdense_jax.convert import __main__ as convert_cli
from mtdense_jax.train import loop
from tests import taskprompter_testing as tpt
from tests.conftest import REPO

CONFIG = str(REPO / "configs" / "synthetic_taskprompter.py") + ":runlocal"
# (h, w): wide, tall, and larger than the model in both directions.
SIZES = [(20, 100), (90, 30), (150, 210)]


def _images(seed: int = 0) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in SIZES]


def _save(images, folder) -> list[str]:
  folder.mkdir(exist_ok=True)
  paths = []
  for i, image in enumerate(images):
    paths.append(str(folder / f"im{i}.png"))
    Image.fromarray(image).save(paths[-1])
  return paths


def _assert_written_at_image_size(out, paths, images, tasks):
  for path, image in zip(paths, images):
    h, w = image.shape[:2]
    stem = path.rsplit("/", 1)[-1][:-len(".png")]
    for t in tasks:
      with Image.open(out / f"{stem}_{t}.png") as im:
        assert im.size == (w, h), (stem, t, im.size)
    raw = np.load(out / f"{stem}.npz")
    assert sorted(raw.files) == sorted(tasks)
    for t in tasks:
      assert raw[t].shape[:2] == (h, w), (stem, t, raw[t].shape)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(config, workdir) of a finished 4-step TaskPrompter run."""
  cfg = config_check.load_config_file(CONFIG)
  cfg.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  workdir = tmp_path_factory.mktemp("run")
  loop.train_and_evaluate(cfg, str(workdir))
  return cfg, workdir


# The run's fixture compiles a train and an eval step: ~100 s on one core
# (cold compile cache), so the workdir tests run under -m slow; the
# converted checkpoint below is the default-suite check.
@pytest.mark.slow
def test_workdir_cli_keeps_each_image_size(run, tmp_path):
  cfg, workdir = run
  images = _images()
  paths = _save(images, tmp_path / "in")
  out = tmp_path / "out"
  assert predict.main(["--workdir", str(workdir), "--images", *paths,
                       "--out", str(out), "--save-raw",
                       "--batch-size", "2"]) == 0
  _assert_written_at_image_size(out, paths, images, cfg.tasks)


@pytest.mark.slow
def test_images_are_fitted_and_padded_to_the_grid(run):
  """The model sees its own size: a wide image is resized to the full
  width, centred, padded with 0 after normalisation (as evaluation pads);
  the prediction is that padded forward's crop, resized back."""
  cfg, workdir = run
  p = predict.Predictor.from_workdir(workdir, batch_size=1)
  assert p.size == tuple(cfg.data.image_size)
  image = _images(seed=1)[0]                          # 20x100 into 32x48
  pl = predict.place(image.shape[:2], p.size)
  assert pl.rw == p.size[1] and pl.rh < p.size[0]     # aspect kept
  assert abs(pl.rh - 20 * pl.rw / 100) <= 0.5
  x, got_pl = predict.preprocess(image, p.size)
  assert got_pl == pl and x.shape == p.size + (3,)
  pad = np.ones(p.size, bool)
  pad[pl.top:pl.top + pl.rh, pl.left:pl.left + pl.rw] = False
  assert np.all(x[pad] == 0)                          # normalised-0 padding
  want = p.forward(x[None])
  got = p.predict([image])[0]
  for t in p.tasks:   # restore crops want to the placement, then resizes
    np.testing.assert_array_equal(got[t], predict.restore(want[t][0], pl),
                                  err_msg=t)
  # No other size fits the grid-tied model: this is why predict resizes.
  other = np.zeros((1, p.size[0] * 2, p.size[1], 3), np.float32)
  with pytest.raises(ValueError, match="grid"):
    p.forward(other)


def test_converted_released_checkpoint(golden, tmp_path):
  """A released-style TaskPrompter file (``module.`` keys under "model";
  the golden PASCAL case's key tree) through ``mtdense_jax.convert`` and
  ``mtdense_jax.predict --checkpoint``: head sizes come from the file."""
  npz, meta = golden("taskprompter_pascal_a")
  sd = tpt.state_dict(npz)
  torch.save({"model": {f"module.{k}": torch.from_numpy(np.array(v))
                        for k, v in sd.items()}, "epoch": 1},
             tmp_path / "checkpoint.pth.tar")
  hw = tuple(meta["config"]["image_size_hw"])
  assert hw[0] != hw[1]
  cfg_file = tmp_path / "tp_small.py"
  recipe = str(REPO / "configs" / "pascal_taskprompter.py")
  cfg_file.write_text(   # The PASCAL recipe at the golden case's size.
      "from mtdense_jax import config_defaults\n"
      "def get_config(arg=None):\n"
      f"  c = config_defaults.load_module({recipe!r}).get_config("
      "'runlocal')\n"
      f"  c.model.update({tpt.model_config(meta)!r})\n"
      f"  c.data.image_size = {hw!r}\n"
      f"  c.data.data_dir = {str(tmp_path / 'no_data')!r}\n"
      "  return c\n")
  assert list(config_check.load_config_file(str(cfg_file)).tasks) == list(
      tpt.task_outputs(meta))
  ckpt_dir = tmp_path / "converted"
  assert convert_cli.main(["--from", "taskprompter", "--input",
                           str(tmp_path / "checkpoint.pth.tar"), "--config",
                           str(cfg_file), "--out", str(ckpt_dir)]) == 0
  images = _images(seed=2)
  paths = _save(images, tmp_path / "in")
  out = tmp_path / "out"
  assert predict.main(["--checkpoint", str(ckpt_dir), "--config",
                       str(cfg_file), "--images", *paths, "--out", str(out),
                       "--save-raw", "--batch-size", "3"]) == 0
  outputs = tpt.task_outputs(meta)
  _assert_written_at_image_size(out, paths, images, outputs)
  for stem in ("im0", "im1", "im2"):   # class ids within the file's heads
    raw = np.load(out / f"{stem}.npz")
    for t in ("semseg", "human_parts"):
      assert 0 <= raw[t].min() and raw[t].max() < outputs[t], (stem, t)
