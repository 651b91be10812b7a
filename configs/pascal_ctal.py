r"""CTAL on PASCAL-Context (5 tasks, 512x512): the paper recipe
(Dimitri-Sinodinos/CTAL @ b2d3bb9,
``code_transformer/configs/pascal/swinv2/ctal.yml``;
``shared/notes/methods.md`` b.2-b.4).

torchvision Swin-V2-S (ImageNet-1k; its final ``norm`` only: the stride-32
map, 768 ch) + CTAL decoder, transformer variant: initial Bottleneck heads
(768 -> 256), the cross-task affinity module at 1/32 = 16x16 (n = 256) with
conv_in = 1x1 conv + BN + ReLU, x2 upsampling, DeepLabV3 (ASPP 12/24/36)
final heads, bilinear to 512x512. Adam (coupled L2 1e-5) at 2e-5, cosine
over 70 epochs of 4998 images (624 steps/epoch), clip-norm 10, batch 8;
weights semseg 2, human_parts 2, sal 5, edge 50 (pos weight 0.95),
normals 10 on (initial + final) per task. InvPT/ATRC augmentation (random
scaling, crop, flip, photometric). The model is tied to 512x512.

  python -m mtdense_jax.convert --from torchvision \
      --input swin_v2_s-637d8ceb.pth --config configs/pascal_ctal.py \
      --out ckpt/swinv2s_pascal
  python launch.py --config configs/pascal_ctal.py:init=ckpt/swinv2s_pascal \
      --workdir runs/pascal_ctal

Args (``configs/pascal_ctal.py:arg=value,...``):
  init: params-only checkpoint to start from (config.init_checkpoint).
  affinity_mode: "fused" (default) or "direct" (a little less memory at
    this n, but XLA CPU's grouped conv is ~100x slower; ctal_memory.py).
"""

from __future__ import annotations

import ml_collections as mlc

from mtdense_jax import config_defaults as common


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = common.parse_arg(arg, init="", affinity_mode="fused")
  c = common.base_config()
  # The reference TASKS.NAMES order (code_transformer/config.py): it is the
  # affinity interleave order, which a converted checkpoint relies on.
  c.tasks = ("semseg", "normals", "sal", "edge", "human_parts")
  c.data.name = "pascal_context"
  c.data.config = "all"
  c.data.image_size = (512, 512)
  c.data.scale_range = (0.5, 2.0)
  c.data.flip = True
  c.data.photometric = True
  c.task_kw = mlc.ConfigDict(dict(edge=dict(pos_weight=0.95)))
  c.init_checkpoint = arg.init

  c.model.encoder = "swin_v2"
  c.model.variant = "S"
  c.model.encoder_kw = mlc.ConfigDict(dict(out_norms="last"))
  c.model.decoder = "ctal"
  c.model.decoder_kw = mlc.ConfigDict(dict(
      variant="transformer", fuse=False, gamma=0.05,
      affinity_mode=arg.affinity_mode))
  c.loss.aux_weight = 1.0
  c.loss.aux_mode = "inside"
  c.weighting.name = "fixed"
  c.weighting.kw = mlc.ConfigDict(dict(weights=dict(
      semseg=2.0, human_parts=2.0, sal=5.0, edge=50.0, normals=10.0)))

  c.optim.name = "adam"
  c.optim.lr = 2e-5
  c.optim.weight_decay = 1e-5
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 0
  c.optim.grad_clip_norm = 10.0
  c.train.batch_size = c.eval.batch_size = 8
  per_epoch = 4998 // 8
  c.train.steps = c.optim.total_steps = 70 * per_epoch
  c.train.log_every = 50
  c.train.eval_every = c.train.ckpt_every = 10 * per_epoch
  c.eval.protocol = "invpt"
  return c
