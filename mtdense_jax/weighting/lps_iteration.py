"""MT-CP's released per-iteration LPS (``weighting.name = "lps_iteration"``).

Klodivio355/MT-CP@08c068e ``losses/loss_schemes.py: MultiTaskLoss2`` (the
released loop never calls it); numpy reference in
``lps_reference.per_iteration_lps``, notes in shared/notes/methods.md a.3.
With l_t^k = log(L_t^k + 1 + eta) of the (base-weighted) raw loss at call k:

    k = 0:   total = sum_t l_t^0;             w^1 = total / l^0
    k >= 1:  total = sum_t sg(w_t^k) l_t^k;   r = l^k / l^{k-1}
             R = total / G^{k-1};             w^{k+1} = r / R

second return value s^k = total for k <= 1, R for k >= 2. ``feedback``
chooses what the caller passes back as G: "literal" = s^k (the second
return value), "total" = total^k (see the golden's two prefixes).

**This recurrence diverges**: w^{k+1} ~ w^{k-1} / w^k, a period-2
oscillation whose log-amplitude grows like Fibonacci numbers, so the weights
reach inf/0 in float32 after ~10 calls (golden: 8 "literal", 10 "total")
whatever the data. The total then turns inf/NaN and the train loop stops at
the next log with "Non-finite loss ... for task(s) ['total']" (train/
loop.py ``_check_finite``; the poisoned state is never checkpointed). It is
here to reproduce the released computation; train with ``lps`` (the stable
variant) or ``lps_epoch``.

``released_no_grad=True`` also reproduces that the released k >= 2 branch
runs under ``torch.no_grad()``: the weighted total then carries no gradient
from call 2 on (only terms outside the weighting, e.g. aux losses, train).
Default False: the gradient flows through l_t with the weights held fixed.
Runs in float32 like the reference (the inf/0 pattern depends on it).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from mtdense_jax.weighting import base

FEEDBACK = ("literal", "total")


def _sum(values: jax.Array) -> jax.Array:
  """Left-to-right float32 sum (the reference's torch.sum of a short stack;
  XLA keeps the order of explicit adds)."""
  acc = values[0]
  for v in values[1:]:
    acc = acc + v
  return acc


@dataclasses.dataclass(frozen=True, kw_only=True)
class Weighting(base.Weighting):
  """The released per-iteration LPS recurrence (diverges; see module)."""

  eta: float = 1e-6
  feedback: str = "literal"
  released_no_grad: bool = False

  def __post_init__(self):
    if self.feedback not in FEEDBACK:
      raise ValueError(f"weighting.kw.feedback={self.feedback!r}; one of "
                       f"{FEEDBACK}")

  def init(self, task_names: Sequence[str]) -> tuple[dict, dict]:
    def full(v):
      return {t: jnp.full((), v, jnp.float32) for t in task_names}
    zero = jnp.zeros((), jnp.float32)
    return {}, {"count": jnp.zeros((), jnp.int32), "prev_log": full(1.0),
                "weights": full(1.0), "g": zero, "second": zero}

  def __call__(self, params: dict, state: dict, losses: base.Losses,
               step: jax.Array) -> tuple[jax.Array, dict, dict[str, jax.Array]]:
    del params, step  # The scheme counts its own calls (checkpointed).
    tasks = list(losses)
    scaled = self.scaled(losses)
    logs = jnp.stack([jnp.log((scaled[t].astype(jnp.float32) + 1.0)
                              + jnp.float32(self.eta)) for t in tasks])
    k = state["count"]
    first = k == 0
    held = jnp.stack([state["weights"][t] for t in tasks])
    w = jax.lax.stop_gradient(jnp.where(first, jnp.ones_like(held), held))
    total = _sum(w * logs)

    l = jax.lax.stop_gradient(logs)
    tot = jax.lax.stop_gradient(total)
    prev_log = jnp.stack([state["prev_log"][t] for t in tasks])
    overall = tot / state["g"]
    new_w = jnp.where(first, tot / l, (l / prev_log) / overall)
    second = jnp.where(k <= 1, tot, overall)
    g = second if self.feedback == "literal" else tot
    if self.released_no_grad:
      total = jnp.where(k >= 2, jax.lax.stop_gradient(total), total)
    new_state = {"count": k + 1, "prev_log": dict(zip(tasks, l)),
                 "weights": dict(zip(tasks, new_w)), "g": g,
                 "second": second}
    return total, new_state, dict(zip(tasks, w))
