"""End-to-end training on tiny synthetic scenes: run, resume, NaN stop,
multi-device equivalence. All share one tiny config, so the persistent
compile cache makes later compiles cheap."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from mtdense_jax import config_check
from mtdense_jax.train import checkpointing as ckpt
from mtdense_jax.train import loop
from tests import train_testing
from tests.conftest import REPO


def tiny_config(data_dir, **train):
  cfg = config_check.load_config_file(
      str(REPO / "configs" / "synthetic_baseline.py") + ":runlocal")
  cfg.data.data_dir = str(data_dir)
  for k, v in train.items():
    cfg.train[k] = v
  cfg.optim.total_steps = cfg.train.steps
  return cfg


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def _params(workdir, cfg, step=None):
  return train_testing.restored_params(workdir / "checkpoints", cfg, step)


def test_train_eval_checkpoint_and_resume(data_dir, tmp_path, capsys):
  cfg = tiny_config(data_dir, steps=4)
  metrics = loop.train_and_evaluate(cfg, str(tmp_path))
  assert all(np.isfinite(v) for v in metrics.values())
  assert {"semseg/mIoU", "depth/rmse", "normals/mean"} <= set(metrics)
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").open()]
  assert [r["step"] for r in rows] == [2, 4]
  assert set(metrics) <= set(rows[-1])
  assert list((tmp_path / "tensorboard").iterdir())
  # --mode eval restores the params alone and reproduces the final metrics.
  again = loop.evaluate_checkpoint(cfg, str(tmp_path))
  for k, v in metrics.items():
    np.testing.assert_allclose(again[k], v, rtol=1e-5, err_msg=k)
  assert json.loads((tmp_path / "eval_step4.json").read_text())["step"] == 4
  # ... and with the boundary benchmark and delta_m against baselines.
  cfg.eval.boundary.enabled = True
  cfg.eval.boundary.thresholds = 5
  cfg.eval.boundary.matcher = "max_cardinality"   # deterministic, fast
  stl = {"semseg": {"mIoU": 0.5}, "depth": {"rmse": 1.0},
         "normals": {"mean": 30.0}, "edge": {"odsF": 0.5}}
  cfg.eval.stl_baselines = stl
  full = loop.evaluate_checkpoint(cfg, str(tmp_path))
  assert {"edge/odsF", "edge/oisF", "edge/AP", "delta_m"} <= set(full)
  assert 0.0 <= full["edge/odsF"] <= 1.0
  expected = np.mean([
      (full["semseg/mIoU"] - 0.5) / 0.5, -(full["depth/rmse"] - 1.0) / 1.0,
      -(full["normals/mean"] - 30.0) / 30.0, (full["edge/odsF"] - 0.5) / 0.5])
  np.testing.assert_allclose(full["delta_m"], expected, rtol=1e-9)
  cfg.eval.boundary.enabled = False
  cfg.eval.stl_baselines = {}
  # Same workdir again: resumes at the last step, does not retrain.
  capsys.readouterr()
  loop.train_and_evaluate(cfg, str(tmp_path))
  out = capsys.readouterr().out
  assert "Resumed" in out and "step 1/" not in out


def test_crash_and_resume_is_exact(data_dir, tmp_path):
  cfg = tiny_config(data_dir, steps=6, eval_every=100)
  loop.train_and_evaluate(cfg, str(tmp_path / "straight"))

  with pytest.raises(KeyboardInterrupt), train_testing.killed_at(5):
    loop.train_and_evaluate(cfg, str(tmp_path / "crashed"))
  loop.train_and_evaluate(cfg, str(tmp_path / "crashed"))

  a, step_a = _params(tmp_path / "straight", cfg)
  b, step_b = _params(tmp_path / "crashed", cfg)
  assert step_a == step_b == 6
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_nan_stops_naming_task_and_keeps_last_good(data_dir, tmp_path,
                                                   monkeypatch):
  cfg = tiny_config(data_dir, steps=4, eval_every=100)
  loop.train_and_evaluate(cfg, str(tmp_path))
  exp_tasks = loop.build_tasks

  def poisoned(config, meta):
    tasks = exp_tasks(config, meta)
    depth = tasks["depth"]
    cls = type(depth)
    bad = type("NaNDepth", (cls,), {
        "loss": lambda self, p, l: cls.loss(self, p, l) * np.float32("nan")})
    tasks["depth"] = bad(num_classes=depth.num_classes,
                         protocol=depth.protocol)
    return tasks

  monkeypatch.setattr(loop, "build_tasks", poisoned)
  cfg.train.steps = cfg.optim.total_steps = 8
  with pytest.raises(FloatingPointError, match="depth"):
    loop.train_and_evaluate(cfg, str(tmp_path))
  mngr = ckpt.manager(tmp_path / "checkpoints", read_only=True)
  assert mngr.latest_step() == 4


def _one_step_total(cfg, devices):
  return train_testing.run_steps(cfg, 1, devices)[0][0]


def test_eight_devices_match_one(data_dir):
  assert len(jax.devices()) == 8, "conftest sets 8 fake CPU devices"
  cfg = tiny_config(data_dir)
  one = _one_step_total(cfg, jax.devices()[:1])
  eight = _one_step_total(cfg, jax.devices())
  for k in one:
    np.testing.assert_allclose(eight[k], one[k], rtol=2e-5, atol=1e-6,
                               err_msg=k)


def test_bf16_compute_keeps_fp32_params(data_dir):
  cfg = tiny_config(data_dir)
  cfg.model.dtype = "bfloat16"
  history, state = train_testing.run_steps(cfg, 1, jax.devices()[:1])
  assert {x.dtype for x in jax.tree.leaves(state["params"])} == {
      np.dtype(np.float32)}
  bf16 = history[0]
  cfg.model.dtype = "float32"
  fp32 = _one_step_total(cfg, jax.devices()[:1])
  assert np.isfinite(bf16["total"])
  # bf16 has ~3 significant digits; the first-step loss agrees to ~1%.
  np.testing.assert_allclose(bf16["total"], fp32["total"], rtol=2e-2)
