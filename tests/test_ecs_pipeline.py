"""The whole ECS pipeline of configs/synthetic_ecs.py:runlocal (base, dense
reference, Steps 1-3; two steps each, a one-block width-16 ViT) through
the generic multi-stage loop, and the summary the ecs_vit plugin prints
after the last stage: its weight-sparsity figures must be those of the
restored gate masks, and every stage's metric row must be there."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

from mtdense_jax import config_defaults
from mtdense_jax.models.encoders import ecs_report
from mtdense_jax.train import loop
from tests import ecs_testing as et


@pytest.mark.slow   # five stages, five train-step compiles (minutes cold)
def test_synthetic_pipeline_prints_consistent_summary(tmp_path, capsys):
  cfg = config_defaults.load_module(
      et.REPO / "configs" / "synthetic_ecs.py").get_config("runlocal")
  cfg.unlock()
  cfg.data.data_dir = str(tmp_path / "tfds")
  cfg.lock()
  loop.train_and_evaluate(cfg, str(tmp_path / "w"))
  out = capsys.readouterr().out
  assert "== ECS summary" in out, out[-3000:]
  summary = out[out.index("== ECS summary"):]
  names = [s["name"] for s in cfg.stages]
  assert names == ["base", "dense", "step1", "step2", "step3"]
  for name in names:
    assert re.search(rf"^  {name} ", summary, re.M), (name, summary)

  subs = [t for t in cfg.tasks if t != cfg.model.encoder_kw.base_task]
  for stage in cfg.stages[2:]:   # the gated stages
    _, _, model = ecs_report.restore_stage_model(
        cfg, stage, pathlib.Path(tmp_path / "w"))
    enc = model.encoder
    row = re.search(rf"^  {stage['name']} +(.*)$", summary.split(
        "Weight sparsity")[1], re.M)
    assert row, summary
    figures = [float(x) for x in re.findall(r"\d\.\d{4}", row.group(1))]
    want = []
    for t in subs:   # independent count from the masks
      m = {n: np.asarray(v) for n, v in enc.mask(t).items()}
      total = sum(v.size for v in m.values())
      kept = sum(int(v.sum()) for v in m.values())
      pos = m["pos_emb"]
      want += [1 - kept / total,
               1 - (kept - int(pos.sum())) / (total - pos.size)]
    np.testing.assert_allclose(figures, want, atol=5e-5)
  # Step 2/3 keep Step 1's mask (ecs_vit docstring): same sparsity.
  rows = {n: re.search(rf"^  {n} +(.*)$", summary.split("Weight sparsity")[1],
                       re.M).group(1) for n in ("step1", "step2", "step3")}
  assert rows["step1"] == rows["step2"] == rows["step3"]
  assert "MACs per image" in summary and "of independent" in summary
