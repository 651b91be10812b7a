"""A task added in one file (tests/toy_height_task.py) is built by the
synthetic builder, augmented by the pipeline and trained by the loop."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from data_builders.synthetic_scenes import builder as scenes
from mtdense_jax import config_check
from mtdense_jax.data import pipeline
from mtdense_jax.data import sources
from mtdense_jax.train import loop
from tests import toy_height_task
from tests.conftest import REPO

ENTRY = "tests.toy_height_task"
TASKS = ("semseg", ENTRY)


def _config(data_dir, steps=4):
  cfg = config_check.load_config_file(
      str(REPO / "configs" / "synthetic_baseline.py") + ":runlocal")
  cfg.tasks = TASKS
  cfg.data.data_dir = str(data_dir)
  cfg.data.builder_kwargs.tasks = TASKS
  cfg.optim.total_steps = cfg.train.steps = steps
  return cfg


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def test_no_other_file_names_the_plugin():
  """No code or config outside the plugin and this test (docs may)."""
  out = subprocess.run(["git", "grep", "--untracked", "-l", "toy_height",
                        "--", ":!*.md"],
                       cwd=REPO, capture_output=True, text=True,
                       timeout=30).stdout
  others = set(out.split()) - {"tests/toy_height_task.py",
                               "tests/test_plugin_task.py"}
  assert not others, others


def test_builder_derives_the_label_from_the_scene(data_dir):
  cfg = _config(data_dir)
  builder = sources.get_builder(cfg.data)
  sources.prepare(builder)
  meta = sources.dataset_meta(builder)
  assert meta["tasks"] == ["semseg", "height"]
  ds = builder.as_data_source("train")
  scene_cfg = builder.builder_config
  for i in (0, 3):
    ex = ds[i]
    assert ex["height"].dtype == np.float32
    assert ex["height"].shape == (32, 48, 1)
    out = scenes.render_example(scene_cfg, "train", i)
    h = ex["height"][..., 0]
    valid = out["valid"]
    np.testing.assert_array_equal(h[~valid], toy_height_task.NO_HEIGHT)
    np.testing.assert_allclose(h[valid], out["points"][..., 1][valid],
                               atol=1e-6)
    # Floor pixels (class 0) are at height 0, the ceiling (2) well above.
    floor = valid & (out["semseg"] == 0)
    ceiling = valid & (out["semseg"] == 2)
    assert np.abs(h[floor]).max(initial=0) < 1e-5
    assert h[ceiling].min(initial=9) > 2.4


def test_pipeline_keeps_heights_through_scale_crop_and_flip(data_dir):
  cfg = _config(data_dir)
  builder = sources.get_builder(cfg.data)
  stored = np.unique(np.concatenate(
      [builder.as_data_source("train")[i]["height"].ravel()
       for i in range(16)]))
  it = pipeline.make_train_iter(cfg.data, TASKS, global_batch_size=8, seed=0)
  for _ in range(2):
    batch = next(it)
    h = batch["height"]
    assert h.shape == (8, 32, 48, 1) and h.dtype == np.float32
    # Nearest resizing, no rescaling of values and no sign flip: every
    # delivered height is a stored one (or the -1 fill of the padding).
    assert np.isin(h, stored).all()
    assert (h == toy_height_task.NO_HEIGHT).any()  # scale < 1 pads


def test_loop_trains_and_evaluates_the_plugin_task(data_dir, tmp_path):
  cfg = _config(data_dir)
  metrics = loop.train_and_evaluate(cfg, str(tmp_path))
  assert np.isfinite(metrics["height/mae"]) and metrics["height/mae"] > 0
  assert "semseg/mIoU" in metrics
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").open()]
  assert "height/mae" in rows[-1]
  meta = json.loads((tmp_path / "dataset_meta.json").read_text())
  assert meta["tasks"] == ["semseg", "height"]


def test_build_tasks_keys_by_task_name_and_applies_task_kw(tmp_path):
  cfg = _config(tmp_path)
  cfg.tasks = ("semseg", "depth", "sal", ENTRY)
  cfg.task_kw.depth = dict(invalid_value=-1, loss_max_depth=6.5535)
  cfg.task_kw.sal = dict(loss_type="hed_bce")
  meta = {"tasks": ["semseg", "depth", "sal", "height"],
          "num_classes": {"semseg": 11}}
  tasks = loop.build_tasks(cfg, meta)
  assert list(tasks) == ["semseg", "depth", "sal", "height"]
  assert isinstance(tasks["height"], toy_height_task.Task)
  assert tasks["depth"].fill == -1 and tasks["depth"].loss_max_depth == 6.5535
  assert tasks["sal"].num_outputs == 1
  with pytest.raises(ValueError, match="provides only"):
    loop.build_tasks(cfg, {"tasks": ["semseg", "depth", "sal"],
                           "num_classes": {"semseg": 11}})
