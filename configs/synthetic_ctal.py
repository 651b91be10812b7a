r"""Quickstart CTAL: a tiny HRNet + the CTAL decoder on synthetic scenes.

Runs end to end on a CPU with no downloads (the dataset is rendered once and
cached under the TFDS data dir, shared with configs/synthetic_baseline.py):

  python launch.py --config configs/synthetic_ctal.py --workdir runs/qs_ctal
  python benchmarks/quickstart.py --config configs/synthetic_ctal.py \
      --workdir runs/qs_ctal

The model is CTAL's CNN architecture at toy size: HRNet (one module per
stage, one block per branch, widths 16/32/32/32) fused at 1/4, initial
Bottleneck heads of 64 ch, the cross-task affinity module at 1/4 = 24x32
(n = 768; tied to 96x128), width 32, Bottleneck final heads. CTAL's loss
(fixed weights on initial + final per task) and the NYUv2 task set; the
optimiser is the quickstart one of configs/synthetic_baseline.py (AdamW,
warmup, clip 1), not the paper's (configs/nyuv2_ctal.py).

Args (``configs/synthetic_ctal.py:arg=value,...``):
  steps: training steps.
  runlocal: a seconds-long smoke run (32x64 images, 4 steps).
"""

from __future__ import annotations

import pathlib

import ml_collections as mlc

from mtdense_jax import config_defaults as common


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = common.parse_arg(arg, steps=800, runlocal=False)
  base = common.load_module(
      pathlib.Path(__file__).with_name("synthetic_baseline.py"))
  c = base.get_config(f"steps={arg.steps}" + (",runlocal" if arg.runlocal
                                              else ""))
  c.tasks = ("semseg", "depth", "normals")
  c.model.encoder = "hrnet"
  c.model.variant = "W18-small-v2"
  c.model.encoder_kw = mlc.ConfigDict(dict(
      fuse=True, stem_planes=16, modules=(1, 1, 1), blocks=1,
      channels=(16, 32, 32, 32)))
  c.model.decoder = "ctal"
  c.model.decoder_kw = mlc.ConfigDict(dict(
      variant="cnn", fuse=True, gamma=0.05, initial_channels=64,
      channels=32, affinity_mode="fused", affinity_chunk=256))
  c.loss.aux_weight = 1.0
  c.loss.aux_mode = "inside"
  c.weighting.name = "fixed"
  c.weighting.kw = mlc.ConfigDict(dict(weights=dict(
      semseg=1.0, depth=1.0, normals=1.0)))
  c.train.batch_size = c.eval.batch_size = 8

  if arg.runlocal:
    # HRNet needs sides divisible by 32: 32x64 scenes, an 8x16 affinity.
    c.data.builder_kwargs = mlc.ConfigDict(dict(
        height=32, width=64, num_train=16, num_validation=8))
    c.data.image_size = (32, 64)
    c.model.encoder_kw.update(dict(stem_planes=8, channels=(4, 8, 8, 8)))
    c.model.decoder_kw.update(dict(initial_channels=16, channels=8))
  return c
