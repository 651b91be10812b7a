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
``constant``. optax evaluates them in float32: ``1 - it / total`` then carries
an absolute error of ~6e-8, which is relative error ~1e-3 on the tiny lr of
the very last steps (lr(39999) ~ 1e-9 of 2e-5) and harmless.
"""

from __future__ import annotations

from typing import Any, Mapping

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
