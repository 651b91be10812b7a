r"""InvPT on NYUD-v2: the paper recipe (Ye & Xu, ECCV'22).

Reproduces prismformore/Multi-Task-Transformer @ 870c6be,
``InvPT/configs/nyud/nyud_vitLp16_invpt.yml`` with ``run_nyud.sh`` (3 GPUs x
batch 2): ViT-L/16 (drop path 0.15) + InvPT decoder (embed 512, +64 for the
prediction channels), 448x576, Adam (coupled L2 1e-6) at 2e-5 with poly 0.9
over 40k iterations, fixed weights 1/1/10/50, deep supervision weight 1; the
recipe is ``../shared/notes/invpt_architecture.md`` section 10.

Needs NYUDv2.tar.gz (InvPT/ATRC release) in the TFDS manual dir (see
data_builders/nyud_v2); without it the launch stops at once saying where to
put it. Start from converted ImageNet ViT weights (``init=``):

  python -m mtdense_jax.convert --from timm-vit --input L_16-i21k.npz \
      --config configs/nyud_invpt.py --out ckpt/vitL_nyud
  python launch.py --config configs/nyud_invpt.py:init=ckpt/vitL_nyud \
      --workdir runs/nyud_invpt

Expected (paper, ViT-L, validation after 40k steps; the table in the
reference InvPT/README.md): semseg mIoU 53.56,
depth RMSE 0.5183, normals mean error 19.04, edge odsF 78.10 (odsF with
--config.eval.boundary.enabled=True; the default edge metric is the loss).

Args (``configs/nyud_invpt.py:arg=value,...``):
  backbone: S, B or L (ViT-S/16, B/16, L/16).
  init: params-only checkpoint to start from (config.init_checkpoint).
  runlocal: a smoke run on the real data: a tiny ViT (width 48, depth 4)
    and InvPT decoder (embed 32 + 16, the golden test's model), batch 2,
    4 steps. The image size stays 448x576: evaluation pads and never
    crops, so a smaller size fails on the real validation images.
"""

from __future__ import annotations

import ml_collections as mlc

from mtdense_jax import config_defaults as common


def invpt_recipe(c: mlc.ConfigDict, backbone: str, init: str) -> None:
  """The InvPT recipe shared by NYUD and PASCAL (everything but the data)."""
  c.init_checkpoint = init
  c.data.scale_range = (0.5, 2.0)
  c.data.flip = True
  c.data.photometric = True
  c.data.cat_max_ratio = 0.75

  c.model.encoder = "vit"
  c.model.variant = f"{backbone}/16"
  c.model.encoder_kw = mlc.ConfigDict(dict(drop_path_rate=0.15))
  c.model.decoder = "invpt"
  c.model.decoder_kw = mlc.ConfigDict(dict(embed_dim=512,
                                           pred_out_constant=64))
  c.loss.aux_weight = 1.0

  c.optim.name = "adam"          # torch.optim.Adam: coupled L2 decay.
  c.optim.lr = 2e-5
  c.optim.weight_decay = 1e-6
  c.optim.schedule = "poly"
  c.optim.poly_power = 0.9
  c.optim.warmup_steps = 0
  c.optim.total_steps = 40000
  c.optim.grad_clip_norm = None

  c.train.steps = 40000
  c.train.batch_size = 6
  c.train.log_every = 50
  c.train.eval_every = 1000
  c.train.ckpt_every = 1000
  c.eval.batch_size = 6
  c.eval.protocol = "invpt"


def runlocal(c: mlc.ConfigDict) -> None:
  """Shrinks the recipe to a smoke run (same data and size, tiny model)."""
  c.model.encoder_kw = mlc.ConfigDict(dict(width=48, depth=4, num_heads=3,
                                           drop_path_rate=0.15))
  c.model.decoder_kw = mlc.ConfigDict(dict(embed_dim=32,
                                           pred_out_constant=16))
  c.optim.total_steps = c.train.steps = 4
  c.train.batch_size = c.eval.batch_size = 2
  c.train.log_every = c.train.ckpt_every = c.train.eval_every = 2


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = common.parse_arg(arg, backbone="L", init="", runlocal=False)
  c = common.base_config()
  c.tasks = ("semseg", "depth", "normals", "edge")
  c.data.name = "nyud_v2"
  c.data.config = "all"
  c.data.image_size = (448, 576)
  invpt_recipe(c, arg.backbone, arg.init)
  c.weighting.name = "fixed"
  # InvPT loss_kwargs.loss_weights (configs/*.yml @ 870c6be).
  c.weighting.kw = mlc.ConfigDict(dict(weights=dict(semseg=1.0, depth=1.0, normals=10.0, edge=50.0)))
  if arg.runlocal:
    runlocal(c)
  return c
