r"""InvPT on PASCAL-Context: the paper recipe (Ye & Xu, ECCV'22).

Reproduces prismformore/Multi-Task-Transformer @ 870c6be,
``InvPT/configs/pascal/pascal_vitLp16_invpt.yml`` with ``run.sh`` (3 GPUs x
batch 2): ViT-L/16 (drop path 0.15) + InvPT decoder (embed 512 + 64),
512x512, Adam (coupled L2 1e-6) at 2e-5 with poly 0.9 over 40k iterations,
fixed weights 1/2/5/10/50, deep supervision weight 1 (recipe:
``../shared/notes/invpt_architecture.md`` section 10). The shared recipe
lives in configs/nyud_invpt.py (``invpt_recipe``).

Needs PASCALContext.tar.gz (InvPT/ATRC release) in the TFDS manual dir (see
data_builders/pascal_context); without it the launch stops at once saying
where to put it.

  python -m mtdense_jax.convert --from timm-vit --input L_16-i21k.npz \
      --config configs/pascal_invpt.py --out ckpt/vitL_pascal
  python launch.py --config configs/pascal_invpt.py:init=ckpt/vitL_pascal \
      --workdir runs/pascal_invpt

Expected (paper, ViT-L, validation after 40k steps; the table in the
reference InvPT/README.md): semseg mIoU 79.03,
human parts mIoU 67.61, saliency maxF 84.81, normals mean error 14.15,
edge odsF 73.00 (with --config.eval.boundary.enabled=True).

Args (``configs/pascal_invpt.py:arg=value,...``):
  backbone: S, B or L (ViT-S/16, B/16, L/16).
  init: params-only checkpoint to start from (config.init_checkpoint).
  runlocal: a smoke run on the real data (tiny model, batch 2, 4 steps,
    still 512x512: see configs/nyud_invpt.py).
"""

from __future__ import annotations

import pathlib

import ml_collections as mlc

from mtdense_jax import config_defaults as common


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = common.parse_arg(arg, backbone="L", init="", runlocal=False)
  nyud = common.load_module(pathlib.Path(__file__).with_name("nyud_invpt.py"))
  c = common.base_config()
  # The reference TASKS.NAMES order (the converter relies on it).
  c.tasks = ("semseg", "human_parts", "sal", "normals", "edge")
  c.data.name = "pascal_context"
  c.data.config = "all"
  c.data.image_size = (512, 512)
  nyud.invpt_recipe(c, arg.backbone, arg.init)
  c.weighting.name = "fixed"
  # InvPT loss_kwargs.loss_weights (configs/*.yml @ 870c6be).
  c.weighting.kw = mlc.ConfigDict(dict(weights=dict(semseg=1.0, human_parts=2.0, sal=5.0, normals=10.0,
                     edge=50.0)))
  if arg.runlocal:
    nyud.runlocal(c)
  return c
