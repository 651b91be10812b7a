r"""MT-CP on PASCAL-Context (Fontana et al., WACV 2025), the released recipe.

Reproduces Klodivio355/MT-CP@08c068e
``configs/pascal/MultiTaskModel_PASCAL.yml`` with ``main_CL_pascal.py``
(facts: ../shared/notes/methods.md a.1-a.2): the NYUD model
(configs/nyud_mtcp.py) on semseg (21), human_parts (7) and saliency (one
HED-BCE channel) at 512x512; semseg and human-parts heads upsample x4
(align_corners=True), the saliency head not at all. AdamW 5e-5 (wd 1e-4),
per-epoch poly 0.9 over 100 epochs, batch 2 per device, deep supervision at
1/2 outside the weighting, plain equal task weights (the released PASCAL
loop has LPS off), MTL-PyTorch evaluation every 25 epochs. The reference's
clip to norm 9 runs after ``optimizer.step()`` and so never acts: no
clipping here.

Differences, said here: **no rotation** (the reference rotates by
U(-20, 20) degrees; mtdense_jax/data/transforms.py has no rotation), the
rescale U(0.75, 1.25) then crops (the reference resizes back); evaluation
not also at each of the last 10 epochs; the best checkpoint is kept by
semseg mIoU (see configs/nyud_mtcp.py for delta_m).

Args: as configs/nyud_mtcp.py (task, devices, init, runlocal,
released_aux_bugs).
"""

from __future__ import annotations

import pathlib

import ml_collections as mlc

from mtdense_jax import config_defaults as common

TASKS = ("semseg", "human_parts", "sal")   # the reference order
TRAIN_IMAGES = 4998
HEAD_UPSAMPLE = {"semseg": 4, "human_parts": 4}


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = common.parse_arg(arg, task="", devices=1, init="", runlocal=False,
                         released_aux_bugs=False)
  nyud = common.load_module(pathlib.Path(__file__).with_name("nyud_mtcp.py"))
  c = common.base_config()
  c.data.name = "pascal_context"
  c.data.config = "mtcp"
  c.data.image_size = (512, 512)
  c.data.scale_range = (0.75, 1.25)
  nyud.mtcp_recipe(c, tasks=TASKS, task=arg.task, train_images=TRAIN_IMAGES,
                   epochs=100, eval_epochs=25, devices=arg.devices,
                   init=arg.init, heads={}, head_upsample=HEAD_UPSAMPLE,
                   released_aux_bugs=arg.released_aux_bugs)
  if arg.runlocal:
    nyud.runlocal(c)
  return c
