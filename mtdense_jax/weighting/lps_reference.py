"""The two LPS computations released with MT-CP, reproduced as numpy.

Reference: Klodivio355/MT-CP @ 08c068ee7bc7bdbd8e05c90a3b4c1260ec7e900b
  * per-iteration: ``losses/loss_schemes.py: MultiTaskLoss2.forward``
    (never called by the released training loop);
  * epoch-level: the ``loss_prio`` / ``data_spread`` block after
    ``train_nyud`` in ``main_CL_nyud.py``, with ``models/utils.py:
    spread_transformation`` (the path the released loop runs; its weights are
    then discarded by ``MultiTaskLoss.forward``, which returns the unweighted
    sum).

These exist for parity checks (``shared/golden/lps.npz``) and for users who
want the released numbers. They are NOT what ``weighting/lps.py`` trains with:
the per-iteration recurrence oscillates with geometrically growing amplitude
(w^{k+1} ~ w^{k-1} / w^k) and reaches inf/0 within ~10 iterations. See
``notes/methods.md`` a.3.

Precision follows the reference: the per-iteration path is float32 (torch)
and its inf/0 entries depend on that; the epoch-level path is float64 (Python
floats built from float32 epoch means).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

ETA = 1e-6


def log_projection(raw_losses: np.ndarray, eta: float = ETA) -> np.ndarray:
  """l = log(L + 1 + eta) in float32, added left to right as torch does."""
  raw = np.asarray(raw_losses, np.float32)
  return np.log((raw + np.float32(1)) + np.float32(eta)).astype(np.float32)


def _sum32(values: np.ndarray) -> np.float32:
  """Sequential float32 sum over the last axis (torch.sum of a short stack)."""
  acc = np.float32(0)
  for v in values:
    acc = np.float32(acc + v)
  return acc


def per_iteration_lps(
    raw_losses: np.ndarray,
    feedback: Literal["literal", "total"] = "literal",
    eta: float = ETA,
) -> dict[str, np.ndarray]:
  """Runs ``MultiTaskLoss2`` over iterations k = 0..K-1 (float32).

  Args:
    raw_losses: (K, T) raw task losses L_t^k.
    feedback: what the caller passes back as ``previous_global_loss`` G^k:
      "literal" = the second return value (total at k = 0, 1, then the overall
      ratio R^k), "total" = ``out['total']``.
    eta: the projection's epsilon.

  Returns:
    Arrays named as in the golden: log_loss (K, T), weights_used (K, T; NaN at
    k = 0), total (K,), second_return (K,), new_weights (K, T),
    total_requires_grad (K,) bool.
  """
  if feedback not in ("literal", "total"):
    raise ValueError(f"feedback must be 'literal' or 'total', got {feedback!r}")
  log_loss = log_projection(raw_losses, eta)
  num_iters, num_tasks = log_loss.shape
  weights_used = np.full((num_iters, num_tasks), np.nan, np.float32)
  new_weights = np.zeros((num_iters, num_tasks), np.float32)
  total = np.zeros((num_iters,), np.float32)
  second = np.zeros((num_iters,), np.float32)
  prev_l = prev_w = prev_g = None
  with np.errstate(over="ignore", divide="ignore", invalid="ignore",
                   under="ignore"):
    for k in range(num_iters):
      l = log_loss[k]
      if k == 0:
        tot = _sum32(l)
        w_next = (tot / l).astype(np.float32)
        ret = tot
      else:
        weights_used[k] = prev_w
        tot = _sum32((l * prev_w).astype(np.float32))
        task_ratio = (l / prev_l).astype(np.float32)
        overall = np.float32(tot / prev_g)
        w_next = (task_ratio / overall).astype(np.float32)
        ret = tot if k == 1 else overall
      total[k], second[k], new_weights[k] = tot, ret, w_next
      prev_l, prev_w = l, w_next
      prev_g = ret if feedback == "literal" else tot
  return {
      "log_loss": log_loss,
      "weights_used": weights_used,
      "total": total,
      "second_return": second,
      "new_weights": new_weights,
      # k >= 2 runs under torch.no_grad(): out['total'] has no gradient.
      "total_requires_grad": np.arange(num_iters) < 2,
  }


def spread_transformation(weights: np.ndarray, factor: float) -> np.ndarray:
  """w <- mean(w) + factor * (w - mean(w)), the mean a Python-order sum."""
  w = np.asarray(weights, np.float64)
  mean = sum(float(v) for v in w) / len(w)
  return np.array([mean + factor * (float(v) - mean) for v in w], np.float64)


def epoch_level_lps(raw_epoch_losses: np.ndarray,
                    spread: float = 7.5) -> dict[str, np.ndarray]:
  """The released epoch-level weights, one row of epoch-mean losses per epoch.

  e = 0: w_t = L^0 / L_t^0 (no spread); e >= 1: w_t = (L_t^e / L_t^{e-1}) /
  (L^e / L^{e-1}) then ``spread_transformation(w, spread)``. L^e = sum_t L_t^e
  (raw losses, not log, not divided by T). Weights may be negative.

  Returns:
    lT (E,), weights_before_spread (E, T), weights (E, T) (float64), and the
    float32 ``MultiTaskLoss`` totals mtl_total_with_weights and sum_of_losses
    (equal: the released forward overwrites the weighted total).
  """
  raw32 = np.asarray(raw_epoch_losses, np.float32)
  num_epochs, num_tasks = raw32.shape
  before = np.zeros((num_epochs, num_tasks), np.float64)
  after = np.zeros((num_epochs, num_tasks), np.float64)
  l_total = np.zeros((num_epochs,), np.float64)
  prev_losses = prev_total = None
  for e in range(num_epochs):
    losses = [float(v) for v in raw32[e]]
    lt = sum(losses)
    if e == 0:
      w = np.array([lt / x for x in losses], np.float64)
      before[e] = after[e] = w
    else:
      overall = lt / prev_total
      w = np.array([(x / p) / overall for x, p in zip(losses, prev_losses)],
                   np.float64)
      before[e] = w
      after[e] = spread_transformation(w, spread)
    l_total[e] = lt
    prev_losses, prev_total = losses, lt
  sums = np.array([_sum32(row) for row in raw32], np.float32)
  return {
      "lT": l_total,
      "weights_before_spread": before,
      "weights": after,
      "mtl_total_with_weights": sums.copy(),
      "sum_of_losses": sums,
  }
