r"""Quickstart InvPT: a tiny ViT + InvPT decoder on the synthetic scenes.

Runs end to end on a fresh machine with no downloads (the dataset is
rendered once and cached under the TFDS data dir, shared with
configs/synthetic_baseline.py):

  python launch.py --config configs/synthetic_invpt.py --workdir runs/quickstart

Measured 5m22s wall for the 800 steps (compile, 2 evaluations and
checkpoints included; dataset already cached, about a minute more the first
time) on an idle 2-core VM. Then

  python benchmarks/quickstart.py --config configs/synthetic_invpt.py \
      --workdir runs/quickstart

prints every validation metric next to the trivial predictor of its task
(majority class, mean depth, mean normal, all-background edges). Measured
(validation, step 800; trivial in brackets): semseg mIoU 0.284 (0.048),
depth RMSE 0.888 (1.238), log-RMSE 0.369 (0.449), normals mean angle
26.8 (49.7) deg, edge loss 0.0618 (0.0628: boundaries are learned last).
Running it again with the same workdir resumes.

Mixed precision (bf16 compute, float32 params) trains to the same metrics
within run-to-run noise:

  python launch.py --config configs/synthetic_invpt.py:steps=300 \
      --workdir runs/qs_f32
  python launch.py --config configs/synthetic_invpt.py:steps=300 \
      --config.model.dtype=bfloat16 --workdir runs/qs_bf16

Measured at step 300, float32 / bfloat16: semseg mIoU 0.206 / 0.202, depth
RMSE 1.020 / 1.020, log-RMSE 0.596 / 0.558, normals mean 31.9 / 32.0 deg,
edge loss 0.0641 / 0.0641 (bf16 is not faster on CPU; it is for GPUs).

The model is the InvPT architecture (ECCV'22, prismformore/
Multi-Task-Transformer @ 870c6be) at toy size; the training recipe is the
framework's quickstart one from configs/synthetic_baseline.py (AdamW with
warmup, LPS loss weighting), not the paper's (configs/nyud_invpt.py).

Args (``configs/synthetic_invpt.py:arg=value,...``):
  steps: training steps.
  runlocal: a seconds-long smoke run (64x64 images, tiny model, 4 steps).
"""

from __future__ import annotations

import pathlib

import ml_collections as mlc

from mtdense_jax import config_defaults as common


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = common.parse_arg(arg, steps=800, runlocal=False)
  # The synthetic quickstart's data, recipe and schedule; only the model and
  # the sizes InvPT needs change here.
  base = common.load_module(
      pathlib.Path(__file__).with_name("synthetic_baseline.py"))
  c = base.get_config(f"steps={arg.steps}" + (",runlocal" if arg.runlocal
                                              else ""))
  # InvPT needs multiples of 64: the 96x128 scenes are padded to 128x128
  # for evaluation (padding is ignored by every metric).
  c.data.image_size = (128, 128)
  c.model.variant = "Ti/16"
  c.model.encoder_kw = mlc.ConfigDict(dict(width=128, depth=4, num_heads=4))
  c.model.decoder = "invpt"
  c.model.decoder_kw = mlc.ConfigDict(dict(embed_dim=64,
                                           pred_out_constant=32))
  c.train.batch_size = 8

  if arg.runlocal:
    c.data.builder_kwargs = mlc.ConfigDict(dict(
        height=64, width=64, num_train=16, num_validation=8))
    c.data.image_size = (64, 64)
    c.model.encoder_kw = mlc.ConfigDict(dict(width=48, depth=4, num_heads=3))
    c.model.decoder_kw = mlc.ConfigDict(dict(embed_dim=16,
                                             pred_out_constant=16))
    c.train.batch_size = c.eval.batch_size = 4
  return c
