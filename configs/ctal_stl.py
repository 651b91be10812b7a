r"""CTAL's single-task baselines (STL), the reference for Delta_m.

Dimitri-Sinodinos/CTAL @ b2d3bb9, ``code_{cnn,transformer}/configs/*/stl.yml``
and ``models/baseline.py: STL``: one backbone and one head per task, i.e. one
run per task here. CNN (nyuv2, cityscapes): HRNet-W18-small-v2 branches
concatenated at 1/4, ``HighResolutionHead`` (1x1 conv + BN + ReLU, 1x1
conv), the multi-task recipe's optimiser, epochs and batch 8. Transformer
(pascal): Swin-V2-S + DeepLabV3 head, batch 2 (4998 // 2 steps per epoch).
Decoder ``ctal`` with ``single_task=True`` builds these heads.

  python launch.py --config configs/ctal_stl.py:dataset=nyuv2,task=depth \
      --workdir runs/nyuv2_stl_depth

Put each run's validation metrics into the multi-task config's
``config.eval.stl_baselines`` ({task: {metric: value}}) for Delta_m.

Args (``configs/ctal_stl.py:arg=value,...``):
  dataset: nyuv2, cityscapes or pascal (the multi-task config it follows).
  task: one of that config's tasks.
  init: params-only checkpoint to start from.
"""

from __future__ import annotations

import pathlib

import ml_collections as mlc

from mtdense_jax import config_defaults as common

DATASETS = ("nyuv2", "cityscapes", "pascal")


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = common.parse_arg(arg, dataset="nyuv2", task="semseg", init="")
  if arg.dataset not in DATASETS:
    raise ValueError(f"configs/ctal_stl.py: dataset={arg.dataset!r}; one of "
                     f"{DATASETS}")
  mtl = common.load_module(
      pathlib.Path(__file__).with_name(f"{arg.dataset}_ctal.py"))
  c = mtl.get_config(f"init={arg.init}" if arg.init else None)
  if arg.task not in c.tasks:
    raise ValueError(f"configs/ctal_stl.py: task={arg.task!r} is not a "
                     f"{arg.dataset} task; one of {tuple(c.tasks)}")
  c.tasks = (arg.task,)
  c.weighting.kw = mlc.ConfigDict(dict(weights={arg.task: 1.0}))
  c.loss.aux_weight = 0.0          # STL has no initial predictions.
  c.task_kw = mlc.ConfigDict({t: kw for t, kw in c.task_kw.items()
                              if t == arg.task})
  transformer = c.model.decoder_kw.variant == "transformer"
  c.model.decoder_kw = mlc.ConfigDict(dict(
      variant=c.model.decoder_kw.variant, single_task=True,
      fuse=not transformer))
  if not transformer:
    # STL reads the four branches concatenated (no fuse conv in the
    # backbone); the head's own 1x1 conv + BN + ReLU is the decoder's fuse.
    c.model.encoder_kw = mlc.ConfigDict(dict(fuse=True))
  else:
    per_epoch = 4998 // 2
    c.train.batch_size = c.eval.batch_size = 2
    c.train.steps = c.optim.total_steps = 70 * per_epoch
    c.train.eval_every = c.train.ckpt_every = 10 * per_epoch
  return c
