r"""TaskPrompter on NYUD-v2: the paper recipe (Ye & Xu, ICLR 2023).

Reproduces prismformore/Multi-Task-Transformer @ 870c6be,
``TaskPrompter/configs/nyud/nyud_vitLp16_taskprompter.yml`` with its run
script (2 GPUs x batch 2): ViT-L/16 with one prompt per task (drop path
0.15, task features after blocks 6, 12, 18 and the final norm, 4x4 channel
windows), branch width 768, task features 768, no CTR, 448x576; Adam
(coupled L2 1e-6) at 1e-5 (not InvPT's 2e-5), clip-norm 10, poly 0.9 over
40k iterations, fixed weights 1/1/10/50, no deep supervision, depth invalid
= -1 (255 is a valid depth). Recipe: ``../shared/notes/
taskprompter_architecture.md`` sections 5-7.

Needs NYUDv2.tar.gz (InvPT/ATRC release) in the TFDS manual dir (see
data_builders/nyud_v2). The model is tied to 448x576 (``pos_embed`` and
``token_trans`` are sized by the token grid). Start from ImageNet ViT
weights (timm augreg ``vit_large_patch16_384`` .npz) with
``decoders.taskprompter.from_vit_init`` (pos-embed resized bicubically;
prompts and token_trans keep their init), or evaluate a released checkpoint
through ``decoders.taskprompter.from_torch``.

Expected (the reference README's released checkpoint, ViT-L): semseg mIoU
55.90, depth RMSE 0.5062, normals mean error 18.58, edge odsF 77.70.

Args (``configs/nyud_taskprompter.py:arg=value,...``):
  init: params-only checkpoint to start from (config.init_checkpoint).
  runlocal: a smoke run on the real data: a tiny ViT (width 48, depth 4,
    the golden test's sizes), batch 2, 4 steps, still 448x576.
"""

from __future__ import annotations

import ml_collections as mlc

from mtdense_jax import config_defaults as common

# Per backbone: ViT variant, select_list, chan_nheads, E, F, use_ctr.
NYUD_L = dict(variant="L/16", taps=(6, 12, 18), chan_nheads=16,
              embed_dim=768, final_embed_dim=768, use_ctr=False)


def taskprompter_recipe(c: mlc.ConfigDict, arch: dict, init: str) -> None:
  """The TaskPrompter recipe shared by NYUD and PASCAL (all but the data,
  the weights, lr and batch)."""
  c.init_checkpoint = init
  c.data.scale_range = (0.5, 2.0)
  c.data.flip = True
  c.data.photometric = True
  c.data.cat_max_ratio = 0.75
  # TaskPrompter's AddIgnoreRegions marks missing depth (and padding) -1.
  c.task_kw = mlc.ConfigDict(dict(depth=dict(invalid_value=-1.0)))

  c.model.encoder = "taskprompter"
  c.model.variant = arch["variant"]
  c.model.encoder_kw = mlc.ConfigDict(dict(
      drop_path_rate=0.15, taps=arch["taps"],
      prompt_len=1, chan_nheads=arch["chan_nheads"]))
  c.model.decoder = "taskprompter"
  c.model.decoder_kw = mlc.ConfigDict(dict(
      embed_dim=arch["embed_dim"], final_embed_dim=arch["final_embed_dim"],
      use_ctr=arch["use_ctr"]))
  c.loss.aux_weight = 0.0        # No deep supervision.

  c.optim.name = "adam"          # torch.optim.Adam: coupled L2 decay.
  c.optim.weight_decay = 1e-6
  c.optim.schedule = "poly"
  c.optim.poly_power = 0.9
  c.optim.warmup_steps = 0
  c.optim.total_steps = 40000
  c.optim.grad_clip_norm = 10.0  # clip_grad_norm_ before optimizer.step().

  c.train.steps = 40000
  c.train.log_every = 50
  c.train.eval_every = 1000
  c.train.ckpt_every = 1000
  c.eval.protocol = "invpt"
  c.weighting.name = "fixed"


def runlocal(c: mlc.ConfigDict) -> None:
  """Shrinks the recipe to a smoke run (same data and size, tiny model)."""
  c.model.variant = "Ti/16"
  c.model.encoder_kw.update(dict(width=48, depth=4, num_heads=3,
                                 taps=(1, 2, 3)))
  c.model.decoder_kw.update(dict(embed_dim=32, final_embed_dim=40))
  c.optim.total_steps = c.train.steps = 4
  c.train.batch_size = c.eval.batch_size = 2
  c.train.log_every = c.train.ckpt_every = c.train.eval_every = 2


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = common.parse_arg(arg, init="", runlocal=False)
  c = common.base_config()
  # The reference TASKS.NAMES order: prompt rows follow it.
  c.tasks = ("semseg", "depth", "normals", "edge")
  c.data.name = "nyud_v2"
  c.data.config = "all"
  c.data.image_size = (448, 576)
  taskprompter_recipe(c, NYUD_L, arg.init)
  c.optim.lr = 1e-5
  c.train.batch_size = c.eval.batch_size = 4
  c.weighting.kw = mlc.ConfigDict(dict(weights=dict(
      semseg=1.0, depth=1.0, normals=10.0, edge=50.0)))
  if arg.runlocal:
    runlocal(c)
  return c
