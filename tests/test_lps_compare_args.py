"""benchmarks/lps_compare.py and the mtl_methods options it relies on
(--config, --set, method keyword arguments), without training."""

from __future__ import annotations

import argparse

from benchmarks import lps_compare
from benchmarks import mtl_methods
from mtdense_jax.weighting import dwa
from mtdense_jax.weighting import lps_epoch


def _args(**kw):
  base = dict(config=lps_compare.DEFAULT_CONFIG, set=[], data_dir="/tmp/x",
              batch=4, steps=40, lr=None, size=64, num_train=16, num_val=8,
              depth=3, tasksets="nyud_like", decoders="baseline")
  base.update(kw)
  return argparse.Namespace(**base)


def test_method_specs_carry_keyword_arguments():
  specs = lps_compare.methods(5, released=True, spread=7.5)
  built = {s.split(":")[0]: mtl_methods.weighting_for(s, ["a", "b"])
           for s in specs}
  assert isinstance(built["dwa"], dwa.Weighting) and built["dwa"].period == 5
  assert (built["lps"].warmup, built["lps"].period) == (5, 5)
  ep = built["lps_epoch"]
  assert isinstance(ep, lps_epoch.Weighting)
  assert (ep.steps_per_epoch, ep.apply_weights, ep.spread) == (5, True, 7.5)
  # A bare word is still a gradient method's mode.
  assert mtl_methods.weighting_for("pcgrad:representation",
                                   ["a"]).method.mode == "representation"


def test_config_and_set_overrides():
  args = _args(set=[lps_compare.NYUD_TASKS, "optim.lr=0.002"])
  cfg = mtl_methods.make_config(args, "", "")
  assert tuple(cfg.tasks) == ("semseg", "depth", "normals")
  assert cfg.optim.lr == 0.002 and cfg.train.steps == 40
  assert cfg.train.batch_size == 4 and cfg.data.data_dir == "/tmp/x"
  assert mtl_methods.combos(args) == [("nyud_like", "baseline")]
  # Without --config: the recipe grid, as before.
  grid = _args(config=None, tasksets="nyud_like,pascal_like",
               decoders="baseline")
  assert mtl_methods.combos(grid) == [("nyud_like", "baseline"),
                                      ("pascal_like", "baseline")]
  assert mtl_methods.make_config(grid, "nyud_like", "baseline").optim.lr == \
      1e-3
