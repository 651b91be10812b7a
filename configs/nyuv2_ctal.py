r"""CTAL on MTAN's 13-class NYUv2: the paper recipe (Sinodinos & Armanfard,
WACV 2025; Dimitri-Sinodinos/CTAL @ b2d3bb9,
``code_cnn/configs/nyu/hrnet18/ctal.yml``; ``shared/notes/methods.md`` b.2-b.4).

HRNet-W18-small-v2 (ImageNet ``hrnet_w18_small_model_v2.pth``), its four
branches fused at 1/4 (concat + 1x1 conv + BN + ReLU), CTAL decoder (CNN
variant: initial Bottleneck heads, the cross-task affinity module at 1/4 =
72x96, n = 6912 for 288x384, Bottleneck final heads). Adam (coupled L2 1e-4)
at 1e-4, cosine over 200 epochs of 795 images (batch 8, last partial batch
dropped: 99 steps/epoch; the reference steps its cosine once per epoch, here
per step), fixed weights 1/1/1 on (initial + final) loss per task
(``loss.aux_mode="inside"``). The model is tied to 288x384 (the affinity
fusion has one weight set per feature pixel).

Needs the MTAN NYUv2 ``.npy`` release through the ``mtan_nyuv2`` builder
(data_builders/mtan_nyuv2). Start from converted HRNet weights (``init=``):

  python -m mtdense_jax.convert --from official \
      --input hrnet_w18_small_model_v2.pth --config configs/nyuv2_ctal.py \
      --out ckpt/hrnet18_nyuv2
  python launch.py --config configs/nyuv2_ctal.py:init=ckpt/hrnet18_nyuv2 \
      --workdir runs/nyuv2_ctal

Args (``configs/nyuv2_ctal.py:arg=value,...``):
  init: params-only checkpoint to start from (config.init_checkpoint).
  affinity_mode: "fused" (chunked, default) or "direct" (the reference's
    stacked affinities; ~6 GB more activation memory at batch 8).
"""

from __future__ import annotations

import ml_collections as mlc

from mtdense_jax import config_defaults as common


def steps(epochs: int, train_images: int, batch: int) -> int:
  """Reference DataLoader(drop_last=True): whole batches per epoch."""
  return epochs * (train_images // batch)


def ctal_cnn_recipe(c: mlc.ConfigDict, *, init: str, lr: float,
                    epochs: int, train_images: int,
                    affinity_mode: str = "fused") -> None:
  """HRNet-18 + CTAL (CNN) with Adam + cosine: all but the data and tasks."""
  c.init_checkpoint = init
  c.model.encoder = "hrnet"
  c.model.variant = "W18-small-v2"
  c.model.encoder_kw = mlc.ConfigDict(dict(fuse=True))
  c.model.decoder = "ctal"
  c.model.decoder_kw = mlc.ConfigDict(dict(
      variant="cnn", fuse=True, gamma=0.05, affinity_mode=affinity_mode))
  c.loss.aux_weight = 1.0          # total = sum_t w_t (L_initial + L_final)
  c.loss.aux_mode = "inside"
  c.weighting.name = "fixed"

  c.optim.name = "adam"            # torch.optim.Adam: coupled L2 decay.
  c.optim.lr = lr
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 0
  c.optim.grad_clip_norm = None
  c.train.batch_size = c.eval.batch_size = 8
  c.train.steps = c.optim.total_steps = steps(epochs, train_images, 8)
  per_epoch = train_images // 8
  c.train.log_every = 50
  c.train.eval_every = c.train.ckpt_every = 10 * per_epoch
  # MTAN-style metrics (nanmean IoU, pixel accuracy, clamped depth errors,
  # normals as fractions): methods.md b.5, golden ids ctal_cnn/*.
  c.eval.protocol = "mtan"
  # MTAN's images are in [0, 1] and CTAL feeds them unstandardised.
  c.data.image_mean = (0.0, 0.0, 0.0)
  c.data.image_std = (1.0, 1.0, 1.0)


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = common.parse_arg(arg, init="", affinity_mode="fused")
  c = common.base_config()
  c.tasks = ("semseg", "depth", "normals")   # reference TASKS.NAMES order
  c.data.name = "mtan_nyuv2"
  c.data.config = "all"
  c.data.image_size = (288, 384)
  # MTAN's --augmentation: random scale-crop (x1.0/1.2/1.5 zoom) + flip.
  c.data.scale_range = (1.0, 1.5)
  c.data.flip = True
  c.data.photometric = False
  ctal_cnn_recipe(c, init=arg.init, lr=1e-4, epochs=200, train_images=795,
                  affinity_mode=arg.affinity_mode)
  c.weighting.kw = mlc.ConfigDict(dict(weights=dict(
      semseg=1.0, depth=1.0, normals=1.0)))
  # CTAL's CNN normals loss: 1 - cosine (methods.md b.3); semseg CE and
  # the depth L1 over gt != 0 are the tasks' defaults.
  c.task_kw = mlc.ConfigDict(dict(normals=dict(loss_type="cosine")))
  return c
