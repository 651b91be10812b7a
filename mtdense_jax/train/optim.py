"""Optimiser and learning-rate schedule from a config.

Reproduces InvPT's recipe (prismformore/Multi-Task-Transformer @ 870c6be,
``InvPT/utils/common_config.py: get_optimizer`` and ``InvPT/utils/
train_utils.py: PolynomialLR``): ``torch.optim.Adam(lr, weight_decay)``,
whose weight decay is a *coupled* L2 term added to the gradient before the
moment estimates, with ``lr(it) = (lr0 - min_lr) (1 - it / max_iter)^0.9 +
min_lr`` where ``it`` is the number of optimiser steps already taken (the
reference steps its scheduler after ``optimizer.step()``). optax evaluates a
schedule at its own update count, which is 0 for the first update: the same
convention.

  * ``adam``:  clip? -> add_decayed_weights(wd) -> scale_by_adam ->
    scale_by_learning_rate(schedule)      (torch.optim.Adam)
  * ``adamw``: clip? -> scale_by_adam -> add_decayed_weights(wd) ->
    scale_by_learning_rate(schedule)      (torch.optim.AdamW: decay lr * wd * p)

Clipping (``grad_clip_norm``) is on the raw gradients, before the decay term,
as ``torch.nn.utils.clip_grad_norm_`` before ``optimizer.step()``.

Schedules (all optax; ``warmup_steps`` > 0 prepends a linear ramp from 0 to
``lr`` and the decay then runs over ``total_steps - warmup_steps``):
``poly`` (power ``poly_power``, to ``min_lr``), ``cosine`` (to ``min_lr``),
``constant``. ``decay_every`` = k > 1 holds the decayed value for k steps
(lr(it) = main(k * floor(it / k))): a per-epoch schedule (MT-CP steps its
poly scheduler once per epoch) with k = steps per epoch. optax evaluates them in float32: ``1 - it / total`` then carries
an absolute error of ~6e-8, which is relative error ~1e-3 on the tiny lr of
the very last steps (lr(39999) ~ 1e-9 of 2e-5) and harmless.

Flattening (``flatten``: "auto" | "on" | "off", see `flattened`): each
group's chain runs on one raveled vector per dtype instead of per parameter.
Same arithmetic element by element (global-norm clipping sums in another
order: float32 rounding); the optimizer state then holds vectors, not
per-parameter trees, so it is a different checkpoint layout.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

_DEFAULTS = {
    "name": "adam",
    "weight_decay": 0.0,
    "b1": 0.9,
    "b2": 0.999,
    "eps": 1e-8,
    "schedule": "poly",
    "warmup_steps": 0,
    "poly_power": 0.9,
    "min_lr": 0.0,
    "grad_clip_norm": None,
    "flatten": "auto",
    "decay_every": 1,
}


def _get(cfg: Mapping[str, Any] | Any, key: str) -> Any:
  """Item access with this module's defaults (dicts and ConfigDicts)."""
  if key not in _DEFAULTS:
    return cfg[key]
  value = cfg.get(key)
  return _DEFAULTS[key] if value is None else value


def make_schedule(cfg: Mapping[str, Any] | Any) -> optax.Schedule:
  """The learning rate as a function of the number of updates taken."""
  lr = float(_get(cfg, "lr"))
  kind = _get(cfg, "schedule")
  warmup = int(_get(cfg, "warmup_steps"))
  min_lr = float(_get(cfg, "min_lr"))
  decay_steps = int(_get(cfg, "total_steps")) - warmup if kind != "constant" \
      else 0
  if kind != "constant" and decay_steps <= 0:
    raise ValueError(f"total_steps must exceed warmup_steps ({warmup}) for "
                     f"the {kind!r} schedule")
  if kind == "poly":
    main = optax.polynomial_schedule(
        init_value=lr, end_value=min_lr, power=float(_get(cfg, "poly_power")),
        transition_steps=decay_steps)
  elif kind == "cosine":
    main = optax.cosine_decay_schedule(
        init_value=lr, decay_steps=decay_steps,
        alpha=min_lr / lr if lr else 0.0)
  elif kind == "constant":
    main = optax.constant_schedule(lr)
  else:
    raise ValueError(f"Unknown schedule {kind!r}; one of 'poly', 'cosine', "
                     "'constant'")
  every = int(_get(cfg, "decay_every"))
  if every < 1:
    raise ValueError(f"config.optim.decay_every={every}; must be >= 1")
  if every > 1:
    stepwise = main
    main = lambda it: stepwise((it // every) * every)  # noqa: E731
  if warmup <= 0:
    return main
  ramp = optax.linear_schedule(init_value=0.0, end_value=lr,
                               transition_steps=warmup)
  return optax.join_schedules([ramp, main], boundaries=[warmup])


def make_optimizer(
    cfg: Mapping[str, Any] | Any,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optax transformation, schedule) for ``cfg``.

  Args:
    cfg: a dict or ConfigDict with ``name`` ('adam' | 'adamw'), ``lr``,
      ``weight_decay``, ``b1``, ``b2``, ``eps``, ``schedule`` ('poly' |
      'cosine' | 'constant'), ``warmup_steps``, ``total_steps``,
      ``poly_power``, ``min_lr``, ``grad_clip_norm`` (None or float). Only
      ``lr`` (and ``total_steps`` for decaying schedules) are required; the
      rest default to InvPT's values (Adam, poly 0.9, no warmup, no clip).
  """
  schedule = make_schedule(cfg)
  name = _get(cfg, "name")
  wd = float(_get(cfg, "weight_decay"))
  adam = optax.scale_by_adam(b1=float(_get(cfg, "b1")),
                             b2=float(_get(cfg, "b2")),
                             eps=float(_get(cfg, "eps")))
  decay = optax.add_decayed_weights(wd) if wd else optax.identity()
  if name == "adam":
    core = [decay, adam]
  elif name == "adamw":
    core = [adam, decay]
  else:
    raise ValueError(f"Unknown optimizer {name!r}; one of 'adam', 'adamw'")
  clip = _get(cfg, "grad_clip_norm")
  parts = [optax.clip_by_global_norm(float(clip))] if clip else []
  tx = optax.chain(*parts, *core, optax.scale_by_learning_rate(schedule))
  return tx, schedule


# --- Flattened update -----------------------------------------------------
#
# On CPU, XLA runs one kernel per fusion and does not fuse sibling
# per-parameter updates: Adam over the 280 parameters of the tiny InvPT is
# ~845 fusions, each a few microseconds of dispatch for a few hundred
# elements. Raveled, the moments and the update are a handful of fusions
# over one vector; what stays per parameter is slicing the update back out
# (fused with `optax.apply_updates`' add). Tiny perf train step
# (benchmarks/train_step.py --ref-config ...:tiny --ab optim.flatten=off,on):
# 6465 -> 5858 XLA ops, 22893 -> 18456 jaxpr equations to trace, step 1.12x
# less CPU (1.23x wall, round-robin on a loaded machine), cold compile
# unchanged (135 vs 132 CPU-s on that machine).


def _ravel(leaves: list) -> dict[str, jax.Array]:
  """{dtype name: one vector} of `leaves` in order."""
  out: dict[str, list] = {}
  for x in leaves:
    out.setdefault(jnp.result_type(x).name, []).append(jnp.ravel(x))
  return {k: jnp.concatenate(v) if len(v) > 1 else v[0]
          for k, v in out.items()}


def _unravel(flat: dict[str, jax.Array], like: list) -> list:
  """Inverse of `_ravel` with the shapes and order of `like`."""
  offsets = {k: 0 for k in flat}
  out = []
  for x in like:
    k = jnp.result_type(x).name
    n = int(np.prod(x.shape, dtype=np.int64))
    out.append(flat[k][offsets[k]:offsets[k] + n].reshape(x.shape))
    offsets[k] += n
  return out


def flattened(inner: optax.GradientTransformation,
              factor: Callable[[str], float] | None = None
              ) -> optax.GradientTransformation:
  """`inner` applied to the raveled parameters (one vector per dtype).

  ``factor(path) -> float``, when given, multiplies each parameter's update
  after `inner` (layer-wise lr decay, as `scale_by_layer` chained after
  `inner`), as one vector product. Masked-out leaves (optax.MaskedNode of
  an enclosing multi_transform) have no leaves and are skipped, so a group's
  vector holds that group's parameters only.
  """

  def init(params):
    return inner.init(_ravel(jax.tree.leaves(params)))

  def update(updates, state, params=None):
    with_path, treedef = jax.tree_util.tree_flatten_with_path(updates)
    leaves = [x for _, x in with_path]
    flat_params = (None if params is None else
                   _ravel(jax.tree.leaves(params)))
    flat, state = inner.update(_ravel(leaves), state, flat_params)
    if factor is not None:
      scales = [factor(_path(p)) for p, _ in with_path]
      if any(f != 1.0 for f in scales):
        per_dtype: dict[str, list] = {}
        for (_, x), f in zip(with_path, scales):
          per_dtype.setdefault(jnp.result_type(x).name, []).append(
              jnp.full((int(np.prod(x.shape, dtype=np.int64)),), f,
                       jnp.result_type(x)))
        flat = {k: v * (jnp.concatenate(per_dtype[k])
                        if len(per_dtype[k]) > 1 else per_dtype[k][0])
                for k, v in flat.items()}
    return jax.tree.unflatten(treedef, _unravel(flat, leaves)), state

  return optax.GradientTransformation(init, update)


def use_flat(cfg: Mapping[str, Any] | Any, devices: int | None = 1) -> bool:
  """``flatten`` resolved: "auto" flattens on a one-device CPU mesh only (a
  raveled vector cannot follow per-parameter shardings on a mesh; other
  backends are unmeasured); ``devices=None`` (mesh unknown) keeps the
  per-parameter layout."""
  value = _get(cfg, "flatten")
  if value == "auto":
    return devices == 1 and jax.default_backend() == "cpu"
  if value in (True, False, "on", "off"):
    return value in (True, "on")
  raise ValueError(f"config.optim.flatten={value!r}; one of 'auto', 'on', "
                   "'off'")


# --- Parameter groups, freezing, layer-wise lr decay -----------------------
#
# ``config.optim.groups``: a list of {"name", "match" (regex, re.search on
# the parameter path 'encoder/blocks/0/attn/qkv/kernel'), and any key of
# _DEFAULTS, ``lr``, ``optimizer`` ('adam'/'adamw') or ``clip`` (=
# grad_clip_norm, over the group's own gradients) to override for that
# group}. The first group whose
# regex matches owns a parameter; unmatched parameters use the base config
# (group "default"). ``config.optim.freeze``: regexes of parameters that
# never change (optax.set_to_zero: no optimizer state, no weight decay).
# ``config.optim.layer_decay``: {"rate": r, "num_layers": L, "regex": with
# one group capturing the block index} multiplies the lr of block i by
# r^(L - i) and of parameters matching no block (embeddings) by r^(L + 1)
# when ``embed_regex`` matches them; everything else keeps factor 1 (BEiT /
# MAE fine-tuning). Without any of these the result is `make_optimizer`'s,
# state layout included (old checkpoints restore).

FROZEN = "frozen"
DEFAULT_GROUP = "default"


def _path(path: tuple) -> str:
  parts = []
  for k in path:
    name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
    if name != "value":
      parts.append(str(name))
  return "/".join(parts)


def _opt_get(cfg, key, default=None):
  value = cfg.get(key) if hasattr(cfg, "get") else None
  return default if value is None else value


def group_labels(params: Any, groups=(), freeze=(), strip: str = "") -> Any:
  """The label ("frozen", a group name or "default") of every parameter;
  rules see the path with a leading `strip` removed."""
  frozen = [re.compile(p) for p in freeze]
  compiled = [(g["name"], re.compile(g["match"])) for g in groups]

  def label(path, _):
    name = _path(path)
    if strip and name.startswith(strip):
      name = name[len(strip):]
    if any(p.search(name) for p in frozen):
      return FROZEN
    for gname, pat in compiled:
      if pat.search(name):
        return gname
    return DEFAULT_GROUP
  return jax.tree_util.tree_map_with_path(label, params)


def layer_factor(rate: float, num_layers: int, regex: str,
                 embed_regex: str = "", strip: str = ""
                 ) -> Callable[[str], float]:
  """path -> lr multiplier of layer-wise lr decay (see above)."""
  block = re.compile(regex)
  embed = re.compile(embed_regex) if embed_regex else None

  def factor(name: str) -> float:
    if strip and name.startswith(strip):
      name = name[len(strip):]
    m = block.search(name)
    if m:
      return rate ** (num_layers - int(m.group(1)))
    if embed is not None and embed.search(name):
      return rate ** (num_layers + 1)
    return 1.0
  return factor


def scale_by_layer(rate: float, num_layers: int, regex: str,
                   embed_regex: str = "", strip: str = ""
                   ) -> optax.GradientTransformation:
  """Stateless per-parameter lr multiplier (layer-wise lr decay)."""
  factor = layer_factor(rate, num_layers, regex, embed_regex, strip)

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(
        lambda p, u: u * factor(_path(p)), updates), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_model_optimizer(
    cfg: Mapping[str, Any] | Any, strip: str = "model/",
    devices: int | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`make_optimizer` plus ``groups``, ``freeze``, ``layer_decay`` and
  ``flatten`` (`use_flat` for a mesh of `devices` devices: each group's
  chain, layer decay included, runs `flattened`).

  The train step hands the optimizer {"model": params, "weighting": ...}
  (the model branch reaches this transformation inside optax's outer
  multi_transform with that key), so rules see paths with `strip` removed:
  'encoder/blocks/0/...'. Returns (transformation, the base group's schedule
  for logging).
  """
  groups = [dict(g) for g in (_opt_get(cfg, "groups", ()) or ())]
  freeze = tuple(_opt_get(cfg, "freeze", ()) or ())
  decay = dict(_opt_get(cfg, "layer_decay", {}) or {})
  flat = use_flat(cfg, devices)
  base = {k: v for k, v in dict(cfg).items()
          if k not in ("groups", "freeze", "layer_decay", "flatten")}
  tx, schedule = make_optimizer(base)
  if not groups and not freeze and not decay.get("rate"):
    return (flattened(tx) if flat else tx), schedule
  for g in groups:
    missing = {"name", "match"} - set(g)
    if missing or g["name"] in (FROZEN, DEFAULT_GROUP):
      raise ValueError(
          f"config.optim.groups entry {g} needs 'name' and 'match' (regex) "
          f"and a name other than {FROZEN!r}/{DEFAULT_GROUP!r}.")
  factor = (layer_factor(float(decay["rate"]), int(decay["num_layers"]),
                         decay["regex"], decay.get("embed_regex", ""), strip)
            if decay.get("rate") else None)
  if flat:
    tx = flattened(tx, factor)
  elif factor is not None:
    tx = optax.chain(tx, scale_by_layer(
        float(decay["rate"]), int(decay["num_layers"]), decay["regex"],
        decay.get("embed_regex", ""), strip))
  transforms = {DEFAULT_GROUP: tx, FROZEN: optax.set_to_zero()}
  allowed = set(_DEFAULTS) - {"name", "flatten"}
  for g in groups:
    alias = {"clip": "grad_clip_norm", "optimizer": "name"}
    own = {alias.get(k, k): v for k, v in g.items()
           if k not in ("name", "match")}
    unknown = set(own) - allowed - {"name", "lr", "total_steps"}
    if unknown:
      raise ValueError(f"config.optim.groups entry {g['name']!r}: unknown "
                       f"keys {sorted(unknown)}; allowed: name, match, "
                       "optimizer, clip, lr, total_steps, "
                       f"{', '.join(sorted(allowed))}.")
    group_tx = make_optimizer({**base, **own})[0]
    transforms[g["name"]] = flattened(group_tx) if flat else group_tx
  return optax.multi_transform(
      transforms, lambda p: group_labels(p, groups, freeze, strip)), schedule
