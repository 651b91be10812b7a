"""Pure train and eval steps; jitted with explicit shardings by the loop.

Generic: the steps loop over the configured tasks and never name one.

A model returns {"final": {task: x}, "aux": {head: {task: x}} (optional),
"losses": {name: scalar} (optional: regularisers, distillation terms)}.
`loss_terms` turns that into per-task final/aux terms and named extra terms
and `objective` is the one place the total is built from them (the plain
step and every gradient-accumulation micro-batch use the same function).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from mtdense_jax.gradmethods import base as gm_base
from mtdense_jax.models import features as feats_lib
from mtdense_jax.tasks import base as task_base
from mtdense_jax.train import state as state_lib

Tasks = Mapping[str, task_base.Task]
Batch = Mapping[str, jax.Array]
AUX_REDUCE = ("sum", "last")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """How the total is assembled (``config.loss``); see `objective`."""
  aux_weight: float = 1.0
  aux_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
  aux_mode: str = "inside"
  extra_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
  # Per task t: the task whose loss function scores t's aux predictions
  # (default t itself), and "sum" (default) or "last" (only the aux head
  # that predicts t whose NAME sorts last: dict order does not survive
  # jax transforms, which sort pytree keys). Both exist to reproduce
  # released recipes exactly (e.g. MT-CP's, see
  # models/decoders/mtcp_recipe.py); the defaults are the intended loss.
  aux_loss_from: Mapping[str, str] = dataclasses.field(default_factory=dict)
  aux_reduce: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.aux_mode not in ("inside", "outside"):
      raise ValueError(f"config.loss.aux_mode={self.aux_mode!r}; one of "
                       "'inside' (aux terms weighted with their task) or "
                       "'outside' (added after the weighting)")
    for task, how in self.aux_reduce.items():
      if how not in AUX_REDUCE:
        raise ValueError(f"config.loss.aux_reduce.{task}={how!r}; one of "
                         f"{AUX_REDUCE}")

  @classmethod
  def from_config(cls, loss_cfg: Mapping[str, Any] | Any) -> "LossConfig":
    get = loss_cfg.get
    return cls(aux_weight=float(get("aux_weight", 1.0)),
               aux_weights=dict(get("aux_weights", None) or {}),
               aux_mode=get("aux_mode", None) or "inside",
               extra_weights=dict(get("extra_weights", None) or {}),
               aux_loss_from=dict(get("aux_loss_from", None) or {}),
               aux_reduce=dict(get("aux_reduce", None) or {}))


def loss_terms(tasks: Tasks, preds: Mapping[str, Any], batch: Batch,
               cfg: LossConfig) -> tuple[dict, dict, dict]:
  """(final F_t, weighted aux A_t, weighted model losses R_n) of one batch.

  F_t = loss_t(final_t); A_t = sum over aux heads h that predict t of
  a_h loss_s(aux_h,t) with a_h = ``aux_weights[h]`` (default
  ``aux_weight``) and s = ``aux_loss_from.get(t, t)`` (the task whose loss
  function is applied to t's aux prediction and t's label); with
  ``aux_reduce[t] == "last"`` only the one of these heads whose name sorts
  last counts.
  R_n = e_n r_n for each ``preds["losses"][n]`` = r_n (regularisers the
  model returns), e_n = ``extra_weights[n]`` (default 1).
  """
  unknown = sorted(set(cfg.aux_loss_from.values()) - set(tasks))
  if unknown:
    raise ValueError(f"config.loss.aux_loss_from names {unknown}, not among "
                     f"the configured tasks {sorted(tasks)}.")
  final, aux = {}, {}
  for name, task in tasks.items():
    label = batch[name]
    final[name] = task.loss(preds["final"][name], label)
    aux_loss = tasks[cfg.aux_loss_from.get(name, name)].loss
    heads = [h for h, out in preds.get("aux", {}).items() if name in out]
    if cfg.aux_reduce.get(name, "sum") == "last":
      heads = sorted(heads)[-1:]
    parts = [cfg.aux_weights.get(h, cfg.aux_weight)
             * aux_loss(preds["aux"][h][name], label) for h in heads]
    aux[name] = sum(parts, jnp.zeros((), jnp.float32))
  extra = {n: cfg.extra_weights.get(n, 1.0) * jnp.asarray(v, jnp.float32)
           for n, v in preds.get("losses", {}).items()}
  return final, aux, extra


def split_terms(terms: tuple[dict, dict, dict], cfg: LossConfig
                ) -> tuple[dict, dict]:
  """(per-task losses the weighting sees, {name: term} added after it).

  ``aux_mode="inside"`` (InvPT, CTAL): the weighting sees L_t = F_t + A_t;
  ``"outside"`` (MT-CP): it sees F_t, and every A_t is added after it. The
  model's regularisers R_n are always added after it.
  """
  final, aux, extra = terms
  rest = {f"extra/{n}": v for n, v in extra.items()}
  if cfg.aux_mode == "inside":
    return {t: final[t] + aux[t] for t in final}, rest
  rest.update({f"aux/{t}": aux[t] for t in aux})
  return dict(final), rest


def objective(terms: tuple[dict, dict, dict], weighting: Any, wparams: dict,
              wstate: dict, step: jax.Array, cfg: LossConfig):
  """The ONE place the total is built from `loss_terms` (`split_terms`):

      total = W({L_t}) + sum of the terms after the weighting

  (with fixed weights w_t and aux inside: sum_t w_t (F_t + A_t) + sum_n
  R_n; MT-CP's "LPS-weighted finals + aux / 2" is aux_weight 0.5,
  "outside"). A gradient method builds the same total with its weights
  (`_method_grads`). Returns (total, per-task losses the weighting saw,
  weights, new wstate).
  """
  seen, rest = split_terms(terms, cfg)
  weighted, wstate, weights = weighting(wparams, wstate, seen, step)
  total = weighted + sum(rest.values(), jnp.zeros((), jnp.float32))
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
  (a NaN anywhere in the interval stays NaN, so the loop cannot miss one);
  metrics whose key `acc` lacks are returned but not accumulated.

  ``weighting`` is a loss weighting, or a gradient method in its slot
  (`gradmethods.base.InWeightingSlot`, see `_method_grads`).
  ``loss_cfg``: how the total is built (`objective`). ``grad_accum`` = k > 1
  splits the batch into k micro-batches (see `_accumulated_grads`); the
  optimizer still steps once.
  """
  step = state["step"]
  dropout = jax.random.fold_in(rng, step)
  trainable = {"model": state["params"], "weighting": state["wparams"]}
  extra_metrics = {}

  def loss_fn(trainable, stats, micro, key):
    preds, stats = _forward(defs, defs.train, trainable["model"], stats,
                            micro["image"], nnx.Rngs(dropout=key))
    terms = loss_terms(tasks, preds, micro, loss_cfg)
    total, seen, weights, wstate = objective(
        terms, weighting, trainable["weighting"], state["wstate"], step,
        loss_cfg)
    return total, (terms, seen, weights, wstate, stats)

  if isinstance(weighting, gm_base.InWeightingSlot):
    (total, terms, seen, weights, wstate, stats, g_model,
     extra_metrics) = _method_grads(
         weighting.method, state, batch, dropout, defs=defs, tasks=tasks,
         loss_cfg=loss_cfg, k=grad_accum)
    grads = {"model": g_model,
             "weighting": jax.tree.map(jnp.zeros_like, state["wparams"])}
  elif grad_accum > 1:
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
  metrics.update(extra_metrics)
  acc = {k: acc[k] + (1.0 if k == "count" else metrics[k]) for k in acc}
  return new_state, metrics, acc


def _split_shared(method: gm_base.Method, params: dict) -> tuple[dict, dict]:
  missing = [k for k in method.shared if k not in params]
  if missing:
    raise ValueError(
        f"config.weighting.kw.shared={list(method.shared)}: the model has no "
        f"parameter branch {missing}; its branches are {sorted(params)}.")
  return ({k: params[k] for k in method.shared},
          {k: v for k, v in params.items() if k not in method.shared})


@contextlib.contextmanager
def _tapped(model: nnx.Module, tap: Any):
  """Adds `tap` (zeros) to the encoder's features during the block, so the
  gradient w.r.t. `tap` is the gradient w.r.t. the shared feature."""
  if tap is None:
    yield
    return
  inner = model.encoder

  def encoder(*args, **kwargs):
    return jax.tree.map(jnp.add, feats_lib.as_features(inner(*args, **kwargs)),
                        tap)
  model.encoder = encoder
  try:
    yield
  finally:
    model.encoder = inner


def _method_grads(method: gm_base.Method, state, batch, dropout, *, defs,
                  tasks, loss_cfg, k):
  """A gradient method's update of the model parameters.

  The branches named in ``method.shared`` (default the encoder) get the
  method's combination sum_t w_t g_t of the per-task gradients; every other
  branch (decoder, heads) gets the gradient of sum_t w_t L_t, so a task's
  own parameters see only its loss, scaled by its weight. Terms after the
  weighting (`split_terms`) enter with weight 1. Mode ``"params"``: g_t are
  the per-task gradients of the shared parameters (one vmapped vjp: T
  backward passes, a T x shared-size buffer, kept in the parameters'
  sharding). Mode ``"representation"``: g_t are the per-task gradients of
  the encoder's output features (taken with an additive zero `_tapped`
  into the model), which pass through the decoder only; one weighted
  backward pass then gives all parameter gradients.

  With k > 1 micro-batches: a first scan forms the Gram matrix of the whole
  batch (params: the per-task gradients are summed over micro-batches
  first, as the Gram matrix of a sum is not the sum of Gram matrices;
  representation: the micro-batches' features are disjoint rows of the
  batch's, so their Gram matrices add, scaled by 1/k^2), the method solves
  once, and a second scan takes the weighted gradient (one more forward per
  micro-batch; memory of one micro-batch and T x shared size).
  """
  step = state["step"]
  shared, other = _split_shared(method, state["params"])
  representation = method.mode == "representation"
  # Task order (weights, Gram rows): the config's, not a pytree's sorted one.
  ordered = lambda d: {t: d[t] for t in tasks}

  def fn(shared, other, tap, stats, micro, key):
    model = state_lib.merge(defs.train, {**other, **shared}, stats)
    with _tapped(model, tap):
      preds = model(micro["image"], rngs=nnx.Rngs(dropout=key))
    stats = state_lib.non_trainable(model, defs.trainable)
    terms = loss_terms(tasks, preds, micro, loss_cfg)
    seen, rest = split_terms(terms, loss_cfg)
    return (ordered(seen), rest), (terms, stats)

  def feature_zeros(micro):
    model = state_lib.merge(defs.train, state["params"],
                            state["batch_stats"])
    shapes = jax.eval_shape(lambda: feats_lib.as_features(
        model.encoder(micro["image"], rngs=nnx.Rngs(dropout=0))))
    return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

  def gram_part(stats, micro, key):
    """((losses, rest), terms, stats, what the Gram matrix needs): the
    per-task gradients (params), or their Gram matrix (representation)."""
    if representation:
      probe = lambda z: fn(shared, other, z, stats, micro, key)
      primal = feature_zeros(micro)
    else:
      probe = lambda s: fn(s, other, None, stats, micro, key)
      primal = shared
    (losses, rest), vjp_fn, (terms, stats) = jax.vjp(probe, primal,
                                                     has_aux=True)
    losses = ordered(losses)
    (rows,) = jax.vmap(vjp_fn)(gm_base.task_rows(losses, rest, False))
    part = gm_base.gram(rows) if representation else rows
    return (losses, rest), terms, stats, part

  t = len(tasks)
  if k == 1:
    if representation:
      z0 = feature_zeros(batch)
      (losses, rest), vjp_fn, (terms, stats) = jax.vjp(
          lambda s, o, z: fn(s, o, z, state["batch_stats"], batch, dropout),
          shared, other, z0, has_aux=True)
      losses = ordered(losses)
      _, _, rows = jax.vmap(vjp_fn)(gm_base.task_rows(losses, rest, False))
      g = gm_base.gram(rows)
      w, mstate, info = method.solve(g, losses, state["wstate"], step)
      d_shared, d_other, _ = vjp_fn(
          gm_base.weighted_cotangent(losses, rest, w))
    else:
      (losses, rest), vjp_fn, (terms, stats) = jax.vjp(
          lambda s, o: fn(s, o, None, state["batch_stats"], batch, dropout),
          shared, other, has_aux=True)
      losses = ordered(losses)
      rows, _ = jax.vmap(vjp_fn)(gm_base.task_rows(losses, rest, True))
      g = gm_base.gram(gm_base.first_rows(rows, t))
      w, mstate, info = method.solve(g, losses, state["wstate"], step)
      d_shared = gm_base.combine(rows, gm_base.row_weights(w, rows))
      # The shared part of this vjp is unused and removed by XLA: the
      # weighted pass runs through the task-specific branches only.
      _, d_other = vjp_fn(gm_base.weighted_cotangent(losses, rest, w))
  else:
    micros = micro_batches(batch, k)
    keys = jax.vmap(lambda i: jax.random.fold_in(dropout, i))(jnp.arange(k))

    def first_pass(carry, xs):
      stats, sums = carry
      micro, key = xs
      outs, terms, stats, part = gram_part(stats, micro, key)
      return (stats, jax.tree.map(jnp.add, sums, (outs, terms, part))), None

    first = jax.tree.map(lambda x: x[0], micros)
    outs, terms, _, part = jax.eval_shape(
        lambda: gram_part(state["batch_stats"], first, dropout))
    shapes = (outs, terms, part)
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
    (_, sums), _ = jax.lax.scan(first_pass, (state["batch_stats"], zeros),
                                (micros, keys))
    (losses, rest), terms, part = jax.tree.map(lambda x: x / k, sums)
    losses = ordered(losses)
    g = part / k if representation else gm_base.gram(part)
    w, mstate, info = method.solve(g, losses, state["wstate"], step)

    def second_pass(carry, xs):
      stats, grads = carry
      micro, key = xs
      outs, vjp_fn, (_, stats) = jax.vjp(
          lambda s, o: fn(s, o, None, stats, micro, key), shared, other,
          has_aux=True)
      d = vjp_fn(gm_base.weighted_cotangent(ordered(outs[0]), outs[1], w))
      return (stats, jax.tree.map(jnp.add, grads, d)), None

    zero_grads = jax.tree.map(jnp.zeros_like, (shared, other))
    (stats, (d_shared, d_other)), _ = jax.lax.scan(
        second_pass, (state["batch_stats"], zero_grads), (micros, keys))
    d_shared, d_other = jax.tree.map(lambda x: x / k, (d_shared, d_other))

  total = (sum(info[n] * losses[n] for n in losses)
           + sum(rest.values(), jnp.zeros((), jnp.float32)))
  cos = gm_base.cosines(g)
  names = list(losses)
  extra = {f"cos/{a}|{b}": cos[i, j] for i, a in enumerate(names)
           for j, b in enumerate(names) if i < j}
  grads = {n: (d_shared[n] if n in d_shared else d_other[n])
           for n in state["params"]}
  return total, terms, dict(losses), info, mstate, stats, grads, extra


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


def zero_acc(tasks: Tasks, weighting: Any = None) -> dict:
  """The logged sums: totals, per-task losses and weights, and with a
  gradient method the per-task gradients' pairwise cosines."""
  keys = ["total", "grad_norm", "aux", "extra", "count"]
  keys += [f"loss/{t}" for t in tasks] + [f"weight/{t}" for t in tasks]
  if isinstance(weighting, gm_base.InWeightingSlot):
    names = list(tasks)
    keys += [f"cos/{a}|{b}" for i, a in enumerate(names)
             for b in names[i + 1:]]
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
