"""Pure train and eval steps; jitted with explicit shardings by the loop.

Generic: the steps loop over the configured tasks and never name one.

A model returns {"final": {task: x}, "aux": {head: {task: x}} (optional),
"losses": {name: scalar} (optional: regularisers, distillation terms)}.
`loss_terms` turns that into per-task final/aux terms and named extra terms
and `objective` is the one place the total is built from them (the plain
step and every gradient-accumulation micro-batch use the same function).
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """How the total is assembled (``config.loss``); see `objective`."""
  aux_weight: float = 1.0
  aux_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
  aux_mode: str = "inside"
  extra_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.aux_mode not in ("inside", "outside"):
      raise ValueError(f"config.loss.aux_mode={self.aux_mode!r}; one of "
                       "'inside' (aux terms weighted with their task) or "
                       "'outside' (added after the weighting)")

  @classmethod
  def from_config(cls, loss_cfg: Mapping[str, Any] | Any) -> "LossConfig":
    get = loss_cfg.get
    return cls(aux_weight=float(get("aux_weight", 1.0)),
               aux_weights=dict(get("aux_weights", None) or {}),
               aux_mode=get("aux_mode", None) or "inside",
               extra_weights=dict(get("extra_weights", None) or {}))


def loss_terms(tasks: Tasks, preds: Mapping[str, Any], batch: Batch,
               cfg: LossConfig) -> tuple[dict, dict, dict]:
  """(final F_t, weighted aux A_t, weighted model losses R_n) of one batch.

  F_t = loss_t(final_t); A_t = sum over aux heads h that predict t of
  a_h loss_t(aux_h,t) with a_h = ``aux_weights[h]`` (default
  ``aux_weight``); R_n = e_n r_n for each ``preds["losses"][n]`` = r_n
  (regularisers the model returns), e_n = ``extra_weights[n]`` (default 1).
  """
  final, aux = {}, {}
  for name, task in tasks.items():
    label = batch[name]
    final[name] = task.loss(preds["final"][name], label)
    a = jnp.zeros((), jnp.float32)
    for head, out in preds.get("aux", {}).items():
      if name in out:
        w = cfg.aux_weights.get(head, cfg.aux_weight)
        a = a + w * task.loss(out[name], label)
    aux[name] = a
  extra = {n: cfg.extra_weights.get(n, 1.0) * jnp.asarray(v, jnp.float32)
           for n, v in preds.get("losses", {}).items()}
  return final, aux, extra


def objective(terms: tuple[dict, dict, dict], weighting: Any, wparams: dict,
              wstate: dict, step: jax.Array, cfg: LossConfig):
  """The ONE place the total is built from `loss_terms`.

  ``aux_mode="inside"`` (InvPT, CTAL): the weighting sees L_t = F_t + A_t,
      total = W({F_t + A_t}) + sum_n R_n
  (with fixed weights w_t: sum_t w_t (F_t + A_t) + sum_n R_n).
  ``aux_mode="outside"`` (MT-CP): the weighting sees the finals alone,
      total = W({F_t}) + sum_t A_t + sum_n R_n
  so MT-CP's "LPS-weighted finals + aux / 2" is aux_weight 0.5, "outside".
  Returns (total, per-task losses the weighting saw, weights, new wstate).
  """
  final, aux, extra = terms
  if cfg.aux_mode == "inside":
    seen = {t: final[t] + aux[t] for t in final}
    outside = jnp.zeros((), jnp.float32)
  else:
    seen = dict(final)
    outside = sum(aux.values(), jnp.zeros((), jnp.float32))
  weighted, wstate, weights = weighting(wparams, wstate, seen, step)
  total = weighted + outside + sum(extra.values(), jnp.zeros((), jnp.float32))
  return total, seen, weights, wstate


def _forward(defs: state_lib.ModelDef, graphdef, params, batch_stats, image,
             rngs=None):
  model = state_lib.merge(graphdef, params, batch_stats)
  preds = model(image, rngs=rngs)
  return preds, state_lib.non_trainable(model, defs.trainable)


def _sum_terms(a, b):
  return jax.tree.map(jnp.add, a, b)


def train_step(state: state_lib.State, batch: Batch, acc: dict, *,
               defs: state_lib.ModelDef, tasks: Tasks, weighting: Any,
               tx: optax.GradientTransformation,
               loss_cfg: LossConfig = LossConfig(),
               rng: jax.Array, grad_accum: int = 1
               ) -> tuple[state_lib.State, dict, dict]:
  """One optimizer step. `acc` accumulates per-task loss sums between logs
  (a NaN anywhere in the interval stays NaN, so the loop cannot miss one).

  ``loss_cfg``: how the total is built (`objective`). ``grad_accum`` = k > 1
  splits the batch into k micro-batches (see `_accumulated_grads`); the
  optimizer still steps once.
  """
  step = state["step"]
  dropout = jax.random.fold_in(rng, step)
  trainable = {"model": state["params"], "weighting": state["wparams"]}

  def loss_fn(trainable, stats, micro, key):
    preds, stats = _forward(defs, defs.train, trainable["model"], stats,
                            micro["image"], nnx.Rngs(dropout=key))
    terms = loss_terms(tasks, preds, micro, loss_cfg)
    total, seen, weights, wstate = objective(
        terms, weighting, trainable["weighting"], state["wstate"], step,
        loss_cfg)
    return total, (terms, seen, weights, wstate, stats)

  if grad_accum > 1:
    terms, stats, grads = _accumulated_grads(
        loss_fn, state, trainable, batch, dropout, k=grad_accum)
    total, seen, weights, wstate = objective(
        terms, weighting, trainable["weighting"], state["wstate"], step,
        loss_cfg)
  else:
    (total, (terms, seen, weights, wstate, stats)), grads = \
        jax.value_and_grad(loss_fn, has_aux=True)(
            trainable, state["batch_stats"], batch, dropout)
  updates, opt = tx.update(grads, state["opt"], trainable)
  trainable = optax.apply_updates(trainable, updates)
  new_state = {"step": step + 1, "params": trainable["model"],
               "batch_stats": stats, "wparams": trainable["weighting"],
               "wstate": wstate, "opt": opt}
  _, aux, extra = terms
  metrics = {"total": total, "grad_norm": optax.global_norm(grads["model"]),
             "aux": sum(aux.values(), jnp.zeros(())),
             "extra": sum(extra.values(), jnp.zeros(()))}
  metrics.update({f"loss/{t}": v for t, v in seen.items()})
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


def _accumulated_grads(loss_fn, state, trainable, batch, dropout, *, k):
  """Mean gradient over k micro-batches with `jax.lax.scan` (activation
  memory of one micro-batch; one compiled body).

  Every micro-batch's total uses the step's loss-weighting state, so the
  weights are those one big step would use; the caller then advances the
  weighting state once, on the micro-batch mean of each loss term. BatchNorm
  running statistics (and any other non-trainable variable a forward
  updates) are threaded through the micro-batches in order (as k small
  steps would update them), and BatchNorm normalises with each
  micro-batch's own statistics: with BatchNorm in train mode, or with losses
  averaged over a data-dependent number of valid pixels, the result differs
  from one big step by more than float error.
  """
  grad_fn = jax.grad(loss_fn, has_aux=True)

  def body(carry, xs):
    grads, stats, term_sum = carry
    micro, i = xs
    g, (terms, _, _, _, stats) = grad_fn(trainable, stats, micro,
                                         jax.random.fold_in(dropout, i))
    return (_sum_terms(grads, g), stats, _sum_terms(term_sum, terms)), None

  micros = micro_batches(batch, k)
  first = jax.tree.map(lambda x: x[0], micros)
  zero_terms = jax.tree.map(
      lambda x: jnp.zeros(x.shape, x.dtype),
      jax.eval_shape(lambda: loss_fn(trainable, state["batch_stats"], first,
                                     dropout)[1][0]))
  zeros = jax.tree.map(jnp.zeros_like, trainable)
  (grads, stats, term_sum), _ = jax.lax.scan(
      body, (zeros, state["batch_stats"], zero_terms),
      (micros, jnp.arange(k)))
  grads = jax.tree.map(lambda g: g / k, grads)
  terms = jax.tree.map(lambda v: v / k, term_sum)
  return terms, stats, grads


def zero_acc(tasks: Tasks) -> dict:
  keys = ["total", "grad_norm", "aux", "extra", "count"]
  keys += [f"loss/{t}" for t in tasks] + [f"weight/{t}" for t in tasks]
  return {k: jnp.zeros((), jnp.float32) for k in keys}


def eval_step(params, batch_stats, stats: dict, batch: Batch, *,
              defs: state_lib.ModelDef, tasks: Tasks) -> dict:
  """Folds one eval batch into every task's running metric totals."""
  preds, _ = _forward(defs, defs.eval, params, batch_stats, batch["image"])
  return {name: task.metric_update(stats[name], preds["final"][name],
                                   batch[name], batch["valid"])
          for name, task in tasks.items()}


def predict_step(params, batch_stats, image: jax.Array, *,
                 defs: state_lib.ModelDef, tasks: Tasks) -> dict:
  """Post-processed predictions per task (for saving and visualising)."""
  preds, _ = _forward(defs, defs.eval, params, batch_stats, image)
  return {name: task.postprocess(preds["final"][name])
          for name, task in tasks.items()}


def bind(fn, **static):
  """functools.partial with a readable name in profiles."""
  return functools.wraps(fn)(functools.partial(fn, **static))
