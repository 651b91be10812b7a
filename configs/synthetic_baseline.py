r"""Quickstart: a small ViT + per-task heads on the embedded synthetic scenes.

Runs end to end on a fresh machine with no downloads; the dataset is rendered
once (cached under the TFDS data dir) on first use.

  python launch.py --config configs/synthetic_baseline.py --workdir runs/quickstart

About 10 minutes on 2 CPU cores. Expected (validation, 1200 steps): the model
clearly beats every trivial baseline (`python benchmarks/quickstart.py`
prints both side by side): semseg mIoU well above the majority-class mIoU,
depth RMSE well below the mean-depth RMSE, normals mean angle well below the
mean-normal error. Running it again with the same workdir resumes.

Args (``configs/synthetic_baseline.py:arg=value,...``):
  encoder: "vit" (a 6-block ViT) or a Swin "swin_t|s|b|l" or Swin-V2
    "swin_v2_t|s|b" (all four stages, two blocks each; the decoder resizes
    its stride-4..32 maps to stride 16)
    or "hrnet" (W18-small-v2's four branches; sizes must be multiples of 32,
    so runlocal pads its 32x48 scenes to 32x64) or a Mask2Former
    "mask2former_swin_s|tiny" (the baseline decoder reads its pixel
    embeddings and multi-scale maps).
  variant: ViT variant (Ti/16, S/16, B/16, L/16); ignored for Swin.
  steps: training steps.
  runlocal: a seconds-long smoke run (tiny images, few steps).
"""

import ml_collections as mlc

from mtdense_jax import config_defaults as common


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = common.parse_arg(arg, encoder="vit", variant="Ti/16", steps=1200,
                         runlocal=False)
  c = common.base_config()
  c.tasks = ("semseg", "depth", "normals", "edge")
  c.data.name = "synthetic_scenes"
  c.data.config = "nyud_like"
  c.data.image_size = (96, 128)
  c.data.scale_range = (0.75, 1.25)

  c.model.encoder = "vit"
  c.model.variant = arg.variant
  c.model.encoder_kw = mlc.ConfigDict(dict(depth=6))
  swin = arg.encoder.startswith("swin_")
  if swin:
    # swin_t -> module swin, variant T; swin_v2_t -> module swin_v2.
    module, variant = arg.encoder.rsplit("_", 1)
    c.model.encoder = module
    c.model.variant = variant.upper()
    c.model.encoder_kw = mlc.ConfigDict(dict(depths=(2, 2, 2, 2)))
  elif arg.encoder == "hrnet":
    c.model.encoder = "hrnet"
    c.model.variant = "W18-small-v2"
    c.model.encoder_kw = mlc.ConfigDict()
  elif arg.encoder.startswith("mask2former_"):
    c.model.encoder = "mask2former"
    c.model.variant = arg.encoder[len("mask2former_"):]
    c.model.encoder_kw = mlc.ConfigDict()
  elif arg.encoder != "vit":
    raise ValueError(f"encoder={arg.encoder!r}; vit, swin_t|s|b|l, "
                     "swin_v2_t|s|b, hrnet or mask2former_swin_s|tiny")
  c.model.decoder = "baseline"
  c.model.decoder_kw = mlc.ConfigDict(dict(dim=96))

  c.weighting.name = "lps"
  c.optim.name = "adamw"
  c.optim.lr = 5e-4
  c.optim.weight_decay = 1e-4
  c.optim.warmup_steps = 100
  c.optim.total_steps = arg.steps
  c.optim.grad_clip_norm = 1.0

  c.train.steps = arg.steps
  c.train.batch_size = 16
  c.train.log_every = 50
  c.train.eval_every = 400
  c.train.ckpt_every = 200
  c.eval.batch_size = 16

  if arg.runlocal:
    c.data.builder_kwargs = mlc.ConfigDict(dict(
        height=32, width=48, num_train=16, num_validation=8))
    c.data.image_size = (32, 48)
    c.model.encoder_kw = mlc.ConfigDict(dict(depth=4, width=48, num_heads=3))
    if swin:
      c.model.encoder_kw = mlc.ConfigDict(dict(
          embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
          window_size=4))
    if c.model.encoder == "mask2former":
      c.model.encoder_kw = mlc.ConfigDict()
    if arg.encoder == "hrnet":
      c.data.image_size = (32, 64)
      c.model.encoder_kw = mlc.ConfigDict(dict(
          stem_planes=8, modules=(1, 1, 1), blocks=1, channels=(4, 8, 8, 8)))
    c.model.decoder_kw = mlc.ConfigDict(dict(dim=16))
    c.optim.total_steps = c.train.steps = 4
    c.optim.warmup_steps = 1
    c.train.batch_size = c.eval.batch_size = 8
    c.train.log_every = c.train.ckpt_every = c.train.eval_every = 2
  return c
