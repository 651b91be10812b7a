r"""Quickstart MT-CP-tiny: a tiny Mask2Former + tiny MT-CP decoders on the
synthetic scenes (no downloads; the dataset is rendered once and cached
under the TFDS data dir, shared with configs/synthetic_baseline.py).

  python launch.py --config configs/synthetic_mtcp.py --workdir runs/qs_mtcp
  python benchmarks/quickstart.py --config configs/synthetic_mtcp.py \
      --workdir runs/qs_mtcp

The model is MT-CP's architecture (configs/nyud_mtcp.py) at toy size: the
"tiny" Mask2Former (Swin embed 16, 32-wide pixel embeddings, 8 queries)
and per-task Swins of embed 32 (depths 1/2/1, heads 2/2/2, window 4), FPN,
CFM, trace-back and heads 16 wide, on semseg, depth and normals (MT-CP has
no edge task) at 96x128. MT-CP's loss layout (deep supervision at 1/2
outside the weighting, masked-MSE normals) with the framework's quickstart
optimiser (AdamW with warmup, configs/synthetic_baseline.py), not the
paper's 5e-5 over 100 epochs.

Args (``configs/synthetic_mtcp.py:arg=value,...``):
  steps: training steps.
  runlocal: a seconds-long smoke run (32x48 images, 4 steps).
"""

from __future__ import annotations

import pathlib

import ml_collections as mlc

from mtdense_jax import config_defaults as common


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = common.parse_arg(arg, steps=800, runlocal=False)
  here = pathlib.Path(__file__)
  base = common.load_module(here.with_name("synthetic_baseline.py"))
  nyud = common.load_module(here.with_name("nyud_mtcp.py"))
  c = base.get_config(f"encoder=mask2former_tiny,steps={arg.steps}"
                      + (",runlocal" if arg.runlocal else ""))
  c.tasks = nyud.TASKS
  c.task_kw = mlc.ConfigDict(dict(normals=dict(loss_type="mse")))
  c.model.decoder = "mtcp"
  c.model.decoder_kw = mlc.ConfigDict(dict(
      **nyud.TINY_DECODER, heads=dict(nyud.HEADS),
      head_upsample=dict(nyud.HEAD_UPSAMPLE)))
  c.loss.aux_mode = "outside"
  c.loss.aux_weight = 0.5
  c.train.batch_size = c.eval.batch_size = 8
  return c
