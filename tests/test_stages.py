"""Multi-stage training (train/stages.py) with the toy plugin model: stage 2
restores the encoder only from stage 1 and freezes part of it; killed in
stage 2 and rerun, it ends bit-identical to an uninterrupted run. Also
keep-best and the dataset metadata in the checkpoint's meta item."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from mtdense_jax.train import loop
from tests import test_open_train
from tests import train_testing


def two_stage_config(data_dir):
  cfg = test_open_train.toy_config(data_dir, steps=2, eval_every=100,
                                   ckpt_every=2)
  cfg.optim.groups = ()
  cfg.optim.freeze = ()
  cfg.stages = (
      {"name": "pre", "steps": 2},
      {"name": "fine", "steps": 4, "init_from": "pre",
       "restore": {"include": ("^params/encoder/",)},
       "freeze": ("^encoder/embed/",),
       "override": {"optim.lr": 5e-3, "train.keep_best_metric": "depth/rmse",
                    "train.keep_best_mode": "min", "train.eval_every": 2}},
  )
  return cfg


def _params(directory, cfg, stage):
  from mtdense_jax.train import stages  # pylint: disable=g-import-not-at-top
  scfg = stages.stage_config(cfg, cfg.stages[stage], directory)
  return train_testing.restored_params(
      directory / cfg.stages[stage]["name"] / "checkpoints", scfg)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.mark.slow   # ~2 min on 2 busy cores: 3 two-stage runs.
def test_two_stages_killed_in_stage_two_resume_exactly(data_dir, tmp_path,
                                                       capsys):
  cfg = two_stage_config(data_dir)
  loop.train_and_evaluate(cfg, str(tmp_path / "straight"))
  out = capsys.readouterr().out
  assert "Restored 4 arrays from" in out and "kept as initialised" in out

  pre, _ = _params(tmp_path / "straight", cfg, 0)
  fine, step = _params(tmp_path / "straight", cfg, 1)
  assert step == 4
  enc0, enc1 = pre["params"]["encoder"], fine["params"]["encoder"]
  # Frozen part: exactly stage 1's values after 2 more steps.
  for k in ("kernel", "bias"):
    np.testing.assert_array_equal(enc1["embed"][k], enc0["embed"][k])
    assert not np.array_equal(enc1["block"][k], enc0["block"][k])

  with pytest.raises(KeyboardInterrupt), train_testing.killed_at(3):
    loop.train_and_evaluate(cfg, str(tmp_path / "crashed"))
  capsys.readouterr()
  loop.train_and_evaluate(cfg, str(tmp_path / "crashed"))
  assert "Stage 'pre' complete (step 2); skipping." in capsys.readouterr().out
  again, step = _params(tmp_path / "crashed", cfg, 1)
  assert step == 4
  jax.tree.map(np.testing.assert_array_equal, again, fine)

  # Keep-best: a params-only checkpoint and its metric in WORKDIR/fine/best.
  best = tmp_path / "straight" / "fine" / "best"
  meta = json.loads(next(best.glob("*/meta/metadata")).read_text())
  assert meta["metric"] == "depth/rmse" and np.isfinite(meta["best"])
  rows = [json.loads(l) for l in
          (tmp_path / "straight" / "fine" / "metrics.jsonl").open()]
  rmse = [r["depth/rmse"] for r in rows if "depth/rmse" in r]
  assert meta["best"] == pytest.approx(min(rmse))
  # Dataset metadata for inference, in every checkpoint's meta item.
  last = json.loads(next((tmp_path / "straight" / "fine" / "checkpoints")
                         .glob("4/meta/metadata")).read_text())
  assert {"semseg", "depth"} <= set(last["dataset_meta"]["tasks"])
  assert last["dataset_meta"]["num_classes"]["semseg"] > 1
