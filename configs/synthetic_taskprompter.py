r"""Quickstart TaskPrompter: a tiny ViT with task prompts on synthetic scenes.

Runs end to end on a fresh machine with no downloads (the dataset is
rendered once and cached under the TFDS data dir, shared with
configs/synthetic_baseline.py):

  python launch.py --config configs/synthetic_taskprompter.py \
      --workdir runs/qs_taskprompter
  python benchmarks/quickstart.py --config configs/synthetic_taskprompter.py \
      --workdir runs/qs_taskprompter

(the second command alone trains first when the workdir has no
checkpoint). Measured (validation, step 800; the trivial predictor of each
task in brackets): semseg mIoU 0.260 (0.048), depth RMSE 0.998 (1.237),
log-RMSE 0.445 (0.451), abs-rel 0.301 (0.434), normals mean angle 29.0
(49.6) deg, edge loss 0.0623 (0.0628: boundaries are learned last). That
run took 19m37s wall (dataset rendering 93 s and first-step compile 93 s
included) on a 2-core VM shared with other jobs (load average ~14; 0.6-1.0
steps/s), so expect less on an idle machine.

The model is the TaskPrompter architecture (ICLR'23, prismformore/
Multi-Task-Transformer @ 870c6be) at toy size: width 64, depth 4, 4 heads,
one prompt per task, 2x2 channel windows on the 6x8 token grid of the
96x128 scenes, branch width 32, task features 48, no CTR. The model is tied
to 96x128 (pos_embed and token_trans are sized by the grid). The training
recipe is the framework's quickstart one from configs/synthetic_baseline.py
(AdamW with warmup, LPS loss weighting), not the paper's
(configs/nyud_taskprompter.py).

Args (``configs/synthetic_taskprompter.py:arg=value,...``):
  steps: training steps.
  runlocal: a seconds-long smoke run (32x48 images, tiny model, 4 steps).
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
  c.model.encoder = "taskprompter"
  c.model.variant = "Ti/16"
  c.model.encoder_kw = mlc.ConfigDict(dict(
      width=64, depth=4, num_heads=4, taps=(1, 2, 3),
      prompt_len=1, chan_nheads=4, drop_path_rate=0.1))
  c.model.decoder = "taskprompter"
  c.model.decoder_kw = mlc.ConfigDict(dict(embed_dim=32, final_embed_dim=48,
                                           use_ctr=False))
  c.loss.aux_weight = 0.0        # TaskPrompter has no auxiliary outputs.
  c.train.batch_size = c.eval.batch_size = 8

  if arg.runlocal:
    # 32x48 images: a 2x3 token grid, one channel window.
    c.model.encoder_kw.update(dict(width=32, num_heads=2, chan_nheads=1))
    c.model.decoder_kw.update(dict(embed_dim=16, final_embed_dim=16))
  return c
