"""Config defaults every experiment starts from, and `file.py:arg` parsing.

The defaults double as the schema: config_check rejects keys not here.
Configs are data: ``get_config(arg)`` returns an ``ml_collections.ConfigDict``
and nothing else happens at import. ``parse_arg`` turns the ``file.py:arg``
suffix (``configs/nyud_invpt.py:backbone=S,runlocal``) into typed values and
rejects unknown keys (big_vision's ``bvcc.parse_arg``).
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import types
from typing import Any

import ml_collections as mlc


def load_module(path: str | pathlib.Path) -> types.ModuleType:
  """Imports a config file by path (configs/ is not a package): used by the
  launcher and by configs that build on a sibling config."""
  spec = importlib.util.spec_from_file_location(
      f"_mtdense_cfg_{pathlib.Path(path).stem}", path)
  if spec is None:
    raise FileNotFoundError(path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def parse_arg(arg: str | None, **defaults: Any) -> mlc.ConfigDict:
  """'a=1,flag' -> ConfigDict typed like `defaults`; unknown keys raise."""
  out = mlc.ConfigDict(dict(defaults))
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"Unknown config arg {key!r}; known: {sorted(defaults)}")
    kind = type(defaults[key])
    if kind is bool:
      if value not in ("", "True", "true", "1", "False", "false", "0"):
        raise ValueError(f"Config arg {key}={value!r} is not a bool.")
      out[key] = value in ("", "True", "true", "1")
    else:
      out[key] = kind(value)
  return out


def apply_override(config: mlc.ConfigDict, item: str) -> None:
  """'a.b=value' (a Python literal, else a string) set in place: the
  ``--set`` of the benchmark scripts."""
  key, sep, raw = item.partition("=")
  if not sep:
    raise ValueError(f"--set {item!r}: expected key.sub=value")
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw
  *nodes, leaf = key.split(".")
  node = config
  for n in nodes:
    node = node[n]
  node[leaf] = value


def base_config() -> mlc.ConfigDict:
  """Every key an experiment may set, with defaults (configs override)."""
  c = mlc.ConfigDict()
  c.seed = 0
  c.tasks = ()   # task plugin names (every config names its own)
  c.task_kw = mlc.ConfigDict()          # {task: {field: value}}
  c.init_checkpoint = ""                # params-only checkpoint dir
  # Restore only some arrays of init_checkpoint (regexes on 'params/...',
  # 'batch_stats/...'; train/partial_restore.py); strict: a selected array
  # missing or mis-shaped is an error (else kept at init and reported).
  c.init_restore = mlc.ConfigDict(dict(include=(), exclude=(), strict=True))

  c.data = mlc.ConfigDict(dict(
      name="synthetic_scenes", config="nyud_like",
      data_dir=mlc.config_dict.placeholder(str),
      manual_dir=mlc.config_dict.placeholder(str),
      builder_kwargs=mlc.ConfigDict(),
      train_split="train", eval_split="validation",
      image_size=(96, 128), scale_range=(0.5, 2.0), flip=True,
      photometric=True, cat_max_ratio=0.75, worker_count=0, prefetch=2,
      # Standardisation after scaling to [0, 1] (pipeline, predictor).
      image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225)))

  c.model = mlc.ConfigDict(dict(
      encoder="vit", variant="S/16", encoder_kw=mlc.ConfigDict(),
      decoder="baseline", decoder_kw=mlc.ConfigDict(), dtype="float32",
      # Activation checkpointing per encoder block / decoder stage: "none"
      # or "block"; the policy names a jax.checkpoint_policies member
      # ("nothing_saveable" recomputes everything, "dots_saveable" keeps
      # matmul outputs).
      remat="none", remat_policy="nothing_saveable",
      # Names of the nnx.Variable classes the optimizer trains (a subclass
      # counts); every other collection (BatchNorm stats, frozen copies,
      # masks, EMAs) is carried in the state untrained (train/state.py).
      trainable=("Param",)))

  # train/step.py `objective`: aux head h weighs aux_weights.get(h,
  # aux_weight); aux_mode "inside" puts F_t + A_t through the weighting
  # (InvPT, CTAL), "outside" adds sum_t A_t after it (MT-CP: aux_weight
  # 0.5); a model's own losses (preds["losses"][n]) are added with
  # extra_weights.get(n, 1). aux_loss_from {task: task whose loss scores
  # its aux heads} and aux_reduce {task: "sum" | "last"} reproduce released
  # recipes' quirks (models/decoders/mtcp_recipe.py).
  c.loss = mlc.ConfigDict(dict(
      aux_weight=1.0, aux_weights=mlc.ConfigDict(), aux_mode="inside",
      extra_weights=mlc.ConfigDict(), aux_loss_from=mlc.ConfigDict(),
      aux_reduce=mlc.ConfigDict()))
  c.weighting = mlc.ConfigDict(dict(name="lps", kw=mlc.ConfigDict()))
  c.optim = mlc.ConfigDict(dict(
      name="adamw", lr=1e-4, weight_decay=1e-4, b1=0.9, b2=0.999, eps=1e-8,
      schedule="poly", warmup_steps=0, total_steps=1000, poly_power=0.9,
      min_lr=0.0, grad_clip_norm=mlc.config_dict.placeholder(float),
      decay_every=1,   # >1: the schedule steps every k updates (per epoch)
      # train/optim.py make_model_optimizer: groups = ({"name", "match":
      # regex on 'encoder/blocks/0/...', and any key above to override},
      # ...); freeze = (regex, ...) never updated; layer_decay = {"rate",
      # "num_layers", "regex" (one group = block index), "embed_regex"}.
      groups=(), freeze=(), layer_decay=mlc.ConfigDict(),
      # One raveled vector per dtype instead of per-parameter updates:
      # "auto" = "on" on a one-device CPU mesh, else "off" (train/optim.py).
      flatten="auto"))

  c.train = mlc.ConfigDict(dict(
      steps=1000, batch_size=8, log_every=50, eval_every=500,
      ckpt_every=500, keep_ckpts=3,
      grad_accum=1,    # micro-batches per step (scan inside the jit)
      # Keep-best: also keep the checkpoint with the best value of this
      # evaluation metric ("" = off) in WORKDIR/best/ ("max" or "min").
      keep_best_metric="", keep_best_mode="max"))
  # Multi-stage training (train/stages.py): a list of dicts, each {"name",
  # "init_from" (an earlier stage's name), "restore": {"include": (regex,),
  # "exclude": (regex,)}, "override": {dotted.key: value}}, run in order
  # under WORKDIR/<name>/; () = one plain run in WORKDIR.
  c.stages = ()
  c.eval = mlc.ConfigDict(dict(
      batch_size=8, protocol="invpt", stl_baselines=mlc.ConfigDict(),
      # Boundary odsF/oisF/AP (SEISM protocol, evaluators/boundary.py) for
      # tasks with a boundary metric. Off by default: it is CPU-heavy
      # (~0.5 CPU s per PASCAL-size image). max_dist None takes the dataset's value
      # (0.011 NYUD, 0.0075 PASCAL); thresholds None = SEISM's 101;
      # matcher "bsds" (correspondPixels' assignment, exact, fast),
      # "bsds_csa" (pyEdgeEval's CSA itself, ~20x slower, same counts) or
      # "max_cardinality" (a different matching).
      boundary=mlc.ConfigDict(dict(
          enabled=False, max_dist=mlc.config_dict.placeholder(float),
          thresholds=mlc.config_dict.placeholder(int), matcher="bsds",
          # Worker processes (-1: one per usable core once more than
          # boundary.AUTO_INLINE images are in; 0: inline).
          processes=-1,
          # Threshold tasks per image in the pool; correspondPixels' seed
          # (reset per call; None = clock, not reproducible); gt_mode and
          # gt_key (a batch key, e.g. a LabelMap) of the boundary gt.
          chunks=1, seed=1, gt_mode="auto",
          gt_key=mlc.config_dict.placeholder(str)))))
  # The persistent JAX compilation cache (runtime.compilation_cache_dir):
  # compiled programs are kept so a rerun or resume of the same config
  # starts in seconds. dir None: $MTDENSE_JAX_CACHE, else
  # ~/.cache/mtdense_jax/jit; enabled=False (or MTDENSE_JAX_CACHE=off)
  # compiles everything afresh.
  c.compile_cache = mlc.ConfigDict(dict(
      enabled=True, dir=mlc.config_dict.placeholder(str)))
  c.mesh = mlc.ConfigDict(dict(data=-1, model=1))
  # strategy: "replicate" | "fsdp" (largest divisible dim over 'data' for
  # leaves >= min_size elements) | "rules" (((regex, spec), ...) in rules).
  c.sharding = mlc.ConfigDict(dict(strategy="replicate", rules=(),
                                   min_size=2 ** 14))
  return c
