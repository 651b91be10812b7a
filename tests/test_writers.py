"""Run outputs a newcomer reads: metrics.jsonl, TensorBoard files, the
start/end summaries and the shared depth colour map."""

from __future__ import annotations

import json

from flax import nnx
import jax.numpy as jnp
import numpy as np

from mtdense_jax import viz
from mtdense_jax.train import report
from mtdense_jax.train import writers


def test_reevaluation_replaces_the_row_of_its_step(tmp_path):
  w = writers.MetricWriter(tmp_path, enabled=True)
  w.evaluation(400, {"a/x": 1.0})
  w.evaluation(800, {"a/x": 2.0})
  for value in (3.0, 4.0, 5.0):  # three re-evaluations of the last step
    w.evaluation(800, {"a/x": value})
  w.close()
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").open()]
  assert [(r["step"], r["a/x"]) for r in rows] == [(400, 1.0), (800, 5.0)]


def test_no_event_file_until_something_is_written(tmp_path):
  w = writers.MetricWriter(tmp_path / "run", enabled=True)
  w.close()  # e.g. a run that failed before training
  assert not (tmp_path / "run" / "tensorboard").exists()
  w = writers.MetricWriter(tmp_path / "run", enabled=True)
  w.scalars(1, {"loss": 0.5}, prefix="train/")
  w.close()
  assert len(list((tmp_path / "run" / "tensorboard").iterdir())) == 1


def test_parameter_table_counts_per_module_and_bytes():
  params = {"params": {
      "encoder": nnx.state(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Param),
      "decoder": {"head": {"kernel": jnp.zeros((5, 2), jnp.bfloat16)}}}}
  table = report.parameter_table(params).splitlines()
  rows = {l.split()[0]: l.split()[1:] for l in table[1:]}
  assert rows["params/encoder"][:3] == ["16", "64", "B"]  # 3*4 + 4, f32
  assert rows["params/decoder"][:3] == ["10", "20", "B"]  # bf16
  assert rows["total"][:3] == ["26", "84", "B"]


def test_end_summary_names_every_output_and_the_predict_command(tmp_path):
  text = report.end_summary(tmp_path, 7, {"semseg/mIoU": 0.25,
                                          "depth/rmse": 1.5})
  for part in ("step 7", "semseg/mIoU", "0.2500", "checkpoints/7",
               "metrics.jsonl", "tensorboard", "mtdense_jax.plots",
               f"python -m mtdense_jax.predict --workdir {tmp_path}"):
    assert part in text, part


def test_invalid_depth_differs_from_zero_and_every_valid_colour():
  d = np.array([[0.0, 0.0, 5.0, 10.0]], np.float32)
  valid = np.array([[False, True, True, True]])
  rgb = viz.scalar_rgb(d, 0.0, 10.0, valid=valid)
  ramp = viz.scalar_rgb(np.linspace(0, 10, 256)[None], 0.0, 10.0)[0]
  assert not np.all(rgb[0, 0] == rgb[0, 1])
  assert not np.all(ramp == rgb[0, 0], axis=-1).any()
  assert np.all(rgb[0, 1] == ramp[0]) and np.all(rgb[0, 3] == ramp[-1])
