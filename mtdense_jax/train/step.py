"""Pure train and eval steps; jitted with explicit shardings by the loop.

Generic: the steps loop over the configured tasks and never name one.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from mtdense_jax.tasks import base as task_base
from mtdense_jax.train import state as state_lib

Tasks = Mapping[str, task_base.Task]
Batch = Mapping[str, jax.Array]


def task_losses(tasks: Tasks, preds: Mapping[str, Any], batch: Batch,
                aux_weight: float) -> dict[str, jax.Array]:
  """L_t = loss(final_t) + aux_weight * sum over aux heads of loss(aux_t).

  With aux_weight 1 this is InvPT's deep supervision (the same task weight
  multiplies both terms); MT-CP uses 0.5.
  """
  out = {}
  for name, task in tasks.items():
    label = batch[name]
    loss = task.loss(preds["final"][name], label)
    for aux in preds.get("aux", {}).values():
      if name in aux:
        loss = loss + aux_weight * task.loss(aux[name], label)
    out[name] = loss
  return out


def _forward(graphdef, params, batch_stats, image, rngs=None):
  model = nnx.merge(graphdef, params, batch_stats, copy=True)
  preds = model(image, rngs=rngs)
  return preds, nnx.state(model, nnx.BatchStat)


def train_step(state: state_lib.State, batch: Batch, acc: dict, *,
               defs: state_lib.ModelDef, tasks: Tasks, weighting: Any,
               tx: optax.GradientTransformation, aux_weight: float,
               rng: jax.Array, grad_accum: int = 1
               ) -> tuple[state_lib.State, dict, dict]:
  """One optimizer step. `acc` accumulates per-task loss sums between logs
  (a NaN anywhere in the interval stays NaN, so the loop cannot miss one).

  ``grad_accum`` = k > 1 splits the batch into k micro-batches (see
  `_accumulated_grads`); the optimizer still steps once.
  """
  step = state["step"]
  dropout = jax.random.fold_in(rng, step)
  trainable = {"model": state["params"], "weighting": state["wparams"]}
  if grad_accum > 1:
    total, losses, weights, wstate, stats, grads = _accumulated_grads(
        state, trainable, batch, dropout, defs=defs, tasks=tasks,
        weighting=weighting, aux_weight=aux_weight, k=grad_accum)
  else:
    def loss_fn(trainable):
      preds, stats = _forward(defs.train, trainable["model"],
                              state["batch_stats"], batch["image"],
                              nnx.Rngs(dropout=dropout))
      losses = task_losses(tasks, preds, batch, aux_weight)
      total, wstate, weights = weighting(trainable["weighting"],
                                         state["wstate"], losses, step)
      return total, (losses, weights, wstate, stats)

    (total, (losses, weights, wstate, stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(trainable)
  updates, opt = tx.update(grads, state["opt"], trainable)
  trainable = optax.apply_updates(trainable, updates)
  new_state = {"step": step + 1, "params": trainable["model"],
               "batch_stats": stats, "wparams": trainable["weighting"],
               "wstate": wstate, "opt": opt}
  metrics = {"total": total, "grad_norm": optax.global_norm(grads["model"])}
  metrics.update({f"loss/{t}": v for t, v in losses.items()})
  metrics.update({f"weight/{t}": v for t, v in weights.items()})
  acc = jax.tree.map(jnp.add, acc, {**metrics, "count": jnp.ones(())})
  return new_state, metrics, acc


def micro_batches(batch: Batch, k: int) -> Batch:
  """(B, ...) -> (k, B/k, ...) with micro-batch i = rows i, i+k, i+2k, ...

  Strided rather than contiguous: each device's rows of a 'data'-sharded
  batch split evenly over the k micro-batches, so every micro-batch keeps
  all devices busy and nothing is resharded (B/k must divide by the data
  axis for that).
  """
  def split(x):
    if x.shape[0] % k:
      raise ValueError(f"config.train.grad_accum={k} does not divide the "
                       f"global batch {x.shape[0]}.")
    return jnp.moveaxis(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 1, 0)
  return jax.tree.map(split, dict(batch))


def _accumulated_grads(state, trainable, batch, dropout, *, defs, tasks,
                       weighting, aux_weight, k):
  """Mean gradient over k micro-batches with `jax.lax.scan` (activation
  memory of one micro-batch; one compiled body).

  Every micro-batch's total uses the step's loss-weighting state, so the
  weights are those one big step would use; the weighting state then
  advances once, on the micro-batch mean of each task loss. BatchNorm
  running statistics are threaded through the micro-batches in order (as k
  small steps would update them), and BatchNorm normalises with each
  micro-batch's own statistics: with BatchNorm in train mode, or with losses
  averaged over a data-dependent number of valid pixels, the result differs
  from one big step by more than float error.
  """
  step = state["step"]

  def micro_loss(trainable, stats, micro, key):
    preds, stats = _forward(defs.train, trainable["model"], stats,
                            micro["image"], nnx.Rngs(dropout=key))
    losses = task_losses(tasks, preds, micro, aux_weight)
    total, _, _ = weighting(trainable["weighting"], state["wstate"], losses,
                            step)
    return total, (losses, stats)

  grad_fn = jax.grad(micro_loss, has_aux=True)

  def body(carry, xs):
    grads, stats, loss_sum = carry
    micro, i = xs
    g, (losses, stats) = grad_fn(trainable, stats, micro,
                                 jax.random.fold_in(dropout, i))
    return (jax.tree.map(jnp.add, grads, g), stats,
            jax.tree.map(jnp.add, loss_sum, losses)), None

  zeros = jax.tree.map(jnp.zeros_like, trainable)
  zero_losses = {t: jnp.zeros((), jnp.float32) for t in tasks}
  (grads, stats, loss_sum), _ = jax.lax.scan(
      body, (zeros, state["batch_stats"], zero_losses),
      (micro_batches(batch, k), jnp.arange(k)))
  grads = jax.tree.map(lambda g: g / k, grads)
  losses = {t: v / k for t, v in loss_sum.items()}
  total, wstate, weights = weighting(trainable["weighting"], state["wstate"],
                                     losses, step)
  return total, losses, weights, wstate, stats, grads


def zero_acc(tasks: Tasks) -> dict:
  keys = ["total", "grad_norm", "count"]
  keys += [f"loss/{t}" for t in tasks] + [f"weight/{t}" for t in tasks]
  return {k: jnp.zeros((), jnp.float32) for k in keys}


def eval_step(params, batch_stats, stats: dict, batch: Batch, *,
              defs: state_lib.ModelDef, tasks: Tasks) -> dict:
  """Folds one eval batch into every task's running metric totals."""
  preds, _ = _forward(defs.eval, params, batch_stats, batch["image"])
  return {name: task.metric_update(stats[name], preds["final"][name],
                                   batch[name], batch["valid"])
          for name, task in tasks.items()}


def predict_step(params, batch_stats, image: jax.Array, *,
                 defs: state_lib.ModelDef, tasks: Tasks) -> dict:
  """Post-processed predictions per task (for saving and visualising)."""
  preds, _ = _forward(defs.eval, params, batch_stats, image)
  return {name: task.postprocess(preds["final"][name])
          for name, task in tasks.items()}


def bind(fn, **static):
  """functools.partial with a readable name in profiles."""
  return functools.wraps(fn)(functools.partial(fn, **static))
