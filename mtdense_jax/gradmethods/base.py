"""Gradient-based multi-task methods: per-task gradients in, one gradient out.

Loss weighting (``mtdense_jax/weighting``) sees only the T task losses. The
methods here see the T per-task gradients g_t of the shared parameters (mode
``"params"``) or of the shared feature z (mode ``"representation"``, the
cheaper "-UB" variants), and all of them return a combination
``g = sum_t w_t g_t``. Each ``mtdense_jax/gradmethods/<name>.py`` defines
``class Method(base.Method)``, built from ``config.weighting.kw``.

Only the T x T Gram matrix ``G_ij = <g_i, g_j>`` is needed to find the
weights, so every method is: ``w, state = solve(gram(grads), losses)``, then
``combine(grads, w)``. That is why they shard: under a mesh the per-task
gradients keep the parameters' sharding (leading task axis unsharded),
``gram`` reduces local inner products to a T x T all-reduce, ``combine`` is
elementwise; no full gradient is gathered onto one device.

Integration contract (what the train step calls; all pure, jit-able):

    state = method.init(task_names)                       # once
    # mode "params": shared params s, the rest o (task heads, ...)
    losses, grads, aux, state, info = params_step(
        method, loss_fn, shared, other, state, step)
    # loss_fn(shared, other) -> ({task: scalar loss}, aux)
    # grads = (d shared, d other): shared gets sum_t w_t g_t, other gets
    # the gradient of sum_t w_t L_t (each head scaled by its weight).
    # mode "representation": z = encode_fn(shared); heads_fn(other, z)
    losses, grads, aux, state, info = representation_step(
        method, encode_fn, heads_fn, shared, other, state, step)

Cost: ``params`` runs T backward passes through the whole network (one
vmapped vjp) plus one through the heads, and holds T copies of the shared
gradient; ``representation`` runs T backward passes through the heads only,
then one full backward, and holds T copies of z's gradient. Gradient
accumulation (`accumulated_params_step`): sum the stacked per-task gradients
(and losses) over the micro-batches, then solve once (the Gram matrix of a
sum is not the sum of Gram matrices). The method state goes into
checkpoints like the loss-weighting state. ``base_weights`` (e.g. InvPT's
1/1/10/50) scale each task's loss, and so its gradient, before the method
sees it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from mtdense_jax import registry

Losses = Mapping[str, jax.Array]
PyTree = Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method:
  """Base class. Subclasses implement `weights` on the Gram matrix."""

  mode: str = "params"
  base_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
  # Top-level parameter branches whose gradient the method combines (the
  # train step); every other branch gets the gradient of sum_t w_t L_t.
  shared: Sequence[str] = ("encoder",)

  def __post_init__(self):
    if self.mode not in ("params", "representation"):
      raise ValueError(f"{type(self).__module__}: mode must be 'params' or "
                       f"'representation', got {self.mode!r}")
    if isinstance(self.shared, str) or not self.shared:
      raise ValueError(f"{type(self).__module__}: shared must be a non-empty "
                       f"sequence of parameter branch names, got "
                       f"{self.shared!r}")
    object.__setattr__(self, "shared", tuple(self.shared))

  def init(self, task_names: Sequence[str]) -> dict:
    """Returns the (non-trainable) state, a dict of jnp arrays."""
    del task_names
    return {}

  def backward_passes(self, num_tasks: int) -> str:
    """Backward passes per step, for logs and the README table."""
    if self.mode == "params":
      return f"{num_tasks} full + 1 heads"
    return f"{num_tasks} heads + 1 full"

  def weights(self, gram: jax.Array, losses: jax.Array, state: dict,
              step: jax.Array) -> tuple[jax.Array, dict]:
    """(T, T) Gram, (T,) losses -> (T,) weights of the gradients, state."""
    raise NotImplementedError

  def solve(self, gram: jax.Array, losses: Losses, state: dict,
            step: jax.Array) -> tuple[jax.Array, dict, dict[str, jax.Array]]:
    """`weights` on base-weighted tasks; returns the weights of the raw
    gradients (T,), the new state and {task: weight} for logging."""
    tasks = list(losses)
    b = jnp.asarray([self.base_weights.get(t, 1.0) for t in tasks],
                    jnp.float32)
    raw = jnp.stack([jnp.asarray(losses[t], jnp.float32) for t in tasks])
    gram = jax.lax.stop_gradient(gram.astype(jnp.float32))
    w, state = self.weights(gram * b[:, None] * b[None, :],
                            jax.lax.stop_gradient(raw * b), state, step)
    w = jax.lax.stop_gradient(w * b)
    return w, state, dict(zip(tasks, w))

  def __call__(self, per_task_grads: Mapping[str, PyTree] | PyTree,
               losses: Losses, state: dict, step: jax.Array
               ) -> tuple[PyTree, dict, dict[str, jax.Array]]:
    """Per-task gradients ({task: pytree}, or one pytree with a leading task
    axis in the order of `losses`) -> (combined gradient, state, weights)."""
    grads = stack_tasks(per_task_grads, list(losses))
    w, state, info = self.solve(gram(grads), losses, state, step)
    return combine(grads, w), state, info


def stack_tasks(per_task_grads, tasks: Sequence[str]) -> PyTree:
  """{task: pytree} -> pytree of (T, ...) leaves; a stacked tree passes."""
  if isinstance(per_task_grads, Mapping) and set(per_task_grads) == set(tasks):
    return jax.tree.map(lambda *x: jnp.stack(x),
                        *[per_task_grads[t] for t in tasks])
  return per_task_grads


def gram(stacked: PyTree) -> jax.Array:
  """G_ij = <g_i, g_j> summed over the leaves of a (T, ...) pytree, float32
  at full precision (TF32/bf16 matmuls would bias the solvers). Contracts
  the leaves' own axes: flattening them first would gather a sharded leaf."""
  def leaf(x):
    x = x.astype(jnp.float32)
    axes = tuple(range(1, x.ndim))
    return jnp.tensordot(x, x, axes=(axes, axes),
                         precision=jax.lax.Precision.HIGHEST)
  return sum(leaf(x) for x in jax.tree.leaves(stacked))


def combine(stacked: PyTree, w: jax.Array) -> PyTree:
  """sum_t w_t g_t for every leaf; keeps each leaf's dtype and sharding."""
  return jax.tree.map(
      lambda x: jnp.tensordot(w.astype(x.dtype), x, axes=1), stacked)


def _one_hots(losses: Losses) -> dict:
  tasks = list(losses)
  eye = jnp.eye(len(tasks))
  return {t: eye[i].astype(jnp.asarray(losses[t]).dtype)
          for i, t in enumerate(tasks)}


def task_gradients(loss_fn: Callable[..., tuple[Losses, Any]],
                   *primals: PyTree) -> tuple[Losses, tuple, Any, Callable]:
  """Per-task gradients of ``loss_fn(*primals) -> ({task: loss}, aux)``.

  One forward pass, then the vjp vmapped over the T one-hot cotangents (T
  backward passes in one batched computation). Returns (losses, stacked
  gradients per primal with a leading task axis, aux, vjp_fn); vjp_fn
  takes {task: cotangent} for a further weighted backward pass.
  """
  losses, vjp_fn, aux = jax.vjp(loss_fn, *primals, has_aux=True)
  grads = jax.vmap(vjp_fn)(_one_hots(losses))
  return losses, grads, aux, vjp_fn


def params_step(method: Method, loss_fn, shared: PyTree, other: PyTree,
                state: dict, step: jax.Array):
  """Mode "params": returns (losses, (d shared, d other), aux, state, info).

  Only the shared part of the per-task gradients is used; under jit the
  per-task gradients of `other` are dead code and removed by XLA."""
  losses, (g_shared, _), aux, vjp_fn = task_gradients(loss_fn, shared, other)
  w, state, info = method.solve(gram(g_shared), losses, state, step)
  _, d_other = vjp_fn({t: info[t].astype(jnp.asarray(losses[t]).dtype)
                       for t in losses})
  return losses, (combine(g_shared, w), d_other), aux, state, info


def accumulated_params_step(method: Method, loss_fn, shared: PyTree,
                            other: PyTree, micro_batches: PyTree, state: dict,
                            step: jax.Array):
  """`params_step` over k micro-batches (leading axis of `micro_batches`):
  ``loss_fn(shared, other, micro) -> ({task: loss}, aux)``. A `lax.scan`
  sums the per-task gradients of all parameters (memory: T copies of the
  gradient, one micro-batch of activations); the method then solves once on
  the mean, so the result equals one big step when the losses are means
  over equal micro-batches. Returns as `params_step`, aux stacked over k."""
  def body(acc, micro):
    losses, grads, aux, _ = task_gradients(
        lambda s, o: loss_fn(s, o, micro), shared, other)
    return jax.tree.map(jnp.add, acc, (losses, grads)), aux

  tasks_and_grads = jax.eval_shape(
      lambda m: task_gradients(lambda s, o: loss_fn(s, o, m), shared,
                               other)[:2],
      jax.tree.map(lambda x: x[0], micro_batches))
  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), tasks_and_grads)
  (losses, grads), aux = jax.lax.scan(body, zeros, micro_batches)
  k = jax.tree.leaves(micro_batches)[0].shape[0]
  losses, (g_shared, g_other) = jax.tree.map(lambda x: x / k,
                                             (losses, grads))
  w, state, info = method.solve(gram(g_shared), losses, state, step)
  return (losses, (combine(g_shared, w), combine(g_other, w)), aux, state,
          info)


def representation_step(method: Method, encode_fn, heads_fn, shared: PyTree,
                        other: PyTree, state: dict, step: jax.Array):
  """Mode "representation": z = encode_fn(shared), heads_fn(other, z) ->
  ({task: loss}, aux). Weights from the Gram matrix of dL_t/dz, then one
  backward pass of sum_t w_t L_t. Returns as `params_step`."""
  z, enc_vjp = jax.vjp(encode_fn, shared)
  losses, (_, g_z), aux, head_vjp = task_gradients(heads_fn, other, z)
  w, state, info = method.solve(gram(g_z), losses, state, step)
  d_other, d_z = head_vjp({t: info[t].astype(jnp.asarray(losses[t]).dtype)
                           for t in losses})
  (d_shared,) = enc_vjp(d_z)
  return losses, (d_shared, d_other), aux, state, info


def resolve(name: str) -> tuple[str, Any]:
  """`config.weighting.name` -> ("weighting" | "gradmethod", module): loss
  weightings first, then gradient methods, so one key selects either. A
  dotted (external) module is whichever kind its entry point says."""
  if "." in name:
    for kind in ("weighting", "gradmethod"):
      try:
        return kind, registry.lookup(kind, name)
      except KeyError as e:
        error = e
    raise KeyError(f"weighting.name {name!r}: defines neither 'Weighting' "
                   f"nor 'Method' ({error.args[0]})")
  if name in registry.available("weighting"):
    return "weighting", registry.lookup("weighting", name)
  if name not in registry.available("gradmethod"):
    raise KeyError(
        f"unknown weighting or gradient method {name!r}; loss weightings: "
        f"{', '.join(registry.available('weighting'))}; gradient methods: "
        f"{', '.join(registry.available('gradmethod'))}.")
  return "gradmethod", registry.lookup("gradmethod", name)


@dataclasses.dataclass(frozen=True)
class InWeightingSlot:
  """A gradient method where the train state keeps the loss weighting: no
  trainable parameters, the method's state is ``wstate`` (so it is sharded,
  donated and checkpointed like LPS's history). The train step sees this
  type and asks for per-task gradients instead of calling a weighting."""

  method: Method

  def init(self, task_names: Sequence[str]) -> tuple[dict, dict]:
    return {}, self.method.init(task_names)

  @property
  def base_weights(self) -> Mapping[str, float]:
    return self.method.base_weights


def build(name: str, kw: Mapping[str, Any] | None = None) -> Any:
  """``config.weighting`` -> a loss weighting, or a gradient method in the
  weighting slot (`InWeightingSlot`)."""
  kind, module = resolve(name)
  kw = dict(kw or {})
  if kind == "weighting":
    return module.Weighting(**kw)
  return InWeightingSlot(module.Method(**kw))


# ----------------------------------------------------------------------------
# Pieces the train step assembles (mtdense_jax/train/step.py). Losses come as
# ({task: L_t}, {name: R_n}): R_n are terms outside the method (aux terms
# added after the weighting, model regularisers) that enter with weight 1.


def task_rows(losses: Losses, rest: Mapping[str, jax.Array],
              with_rest: bool) -> tuple[dict, dict]:
  """Cotangents with a leading row axis for one vmapped vjp: row t selects
  L_t; with ``with_rest`` (and rest terms present) a last row selects their
  sum, so combining the rows with (w, 1) gives the full gradient."""
  tasks = list(losses)
  n = len(tasks) + (1 if with_rest and rest else 0)
  eye = jnp.eye(n)
  return ({t: eye[:, i].astype(jnp.asarray(losses[t]).dtype)
           for i, t in enumerate(tasks)},
          {k: (eye[:, -1] if with_rest else jnp.zeros((n,))).astype(
              jnp.asarray(v).dtype) for k, v in rest.items()})


def weighted_cotangent(losses: Losses, rest: Mapping[str, jax.Array],
                       w: jax.Array) -> tuple[dict, dict]:
  """The cotangent of sum_t w_t L_t + sum_n R_n."""
  return ({t: w[i].astype(jnp.asarray(losses[t]).dtype)
           for i, t in enumerate(losses)},
          {k: jnp.ones((), jnp.asarray(v).dtype) for k, v in rest.items()})


def row_weights(w: jax.Array, rows: PyTree) -> jax.Array:
  """(w, 1) when the rows carry a rest row, else w."""
  n = jax.tree.leaves(rows)[0].shape[0]
  return jnp.concatenate([w, jnp.ones((n - w.shape[0],), w.dtype)])


def first_rows(rows: PyTree, t: int) -> PyTree:
  return jax.tree.map(lambda x: x[:t], rows)


def cosines(g: jax.Array) -> jax.Array:
  """Pairwise cosine similarities from a Gram matrix."""
  d = jnp.sqrt(jnp.maximum(jnp.diag(g), 1e-30))
  return g / d[:, None] / d[None, :]
