r"""CTAL on MTAN's Cityscapes (19 classes, 128x256, semseg + depth): the
paper recipe (Dimitri-Sinodinos/CTAL @ b2d3bb9,
``code_cnn/configs/cityscapes/hrnet18/ctal.yml``; ``shared/notes/methods.md``
b.2-b.4).

The NYUv2 recipe (configs/nyuv2_ctal.py: HRNet-W18-small-v2 + fuse, CTAL CNN
decoder, Adam + cosine, batch 8) with Adam at 5e-4 (wd 1e-4) for 75 epochs of
2975 images (371 steps/epoch), weights semseg 1, depth 10. The affinity
module runs at 1/4 = 32x64 (n = 2048); the model is tied to 128x256.

Needs the MTAN Cityscapes ``.npy`` release through the ``mtan_cityscapes``
builder (data_builders/mtan_cityscapes).

Args (``configs/cityscapes_ctal.py:arg=value,...``):
  init: params-only checkpoint to start from (config.init_checkpoint).
  affinity_mode: "fused" (default) or "direct" (a little less memory at
    this n, but XLA CPU's grouped conv is ~100x slower; ctal_memory.py).
"""

from __future__ import annotations

import pathlib

import ml_collections as mlc

from mtdense_jax import config_defaults as common


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = common.parse_arg(arg, init="", affinity_mode="fused")
  nyuv2 = common.load_module(pathlib.Path(__file__).with_name("nyuv2_ctal.py"))
  c = common.base_config()
  c.tasks = ("semseg", "depth")
  c.data.name = "mtan_cityscapes"
  c.data.config = "19class"   # CTAL reads label_19
  c.data.image_size = (128, 256)
  c.data.scale_range = (1.0, 1.5)
  c.data.flip = True
  c.data.photometric = False
  nyuv2.ctal_cnn_recipe(c, init=arg.init, lr=5e-4, epochs=75,
                        train_images=2975, affinity_mode=arg.affinity_mode)
  c.weighting.kw = mlc.ConfigDict(dict(weights=dict(semseg=1.0, depth=10.0)))
  return c
