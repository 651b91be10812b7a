"""Train state: built abstractly first, then materialised already sharded.

The state is a plain dict (big_vision style) of pytrees:

  step        int32 scalar: optimizer steps taken (drives schedule and RNG)
  params      the trainable model variables: those whose class (or a base
              class) is named in ``config.model.trainable`` (default
              ("Param",))
  batch_stats every other model variable: BatchNorm statistics and any
              other collection a model declares (frozen base weights, masks,
              gate logits, EMA copies): carried, checkpointed and passed to
              the forward, never given to the optimizer
  wparams     trainable parameters of the loss weighting (may be empty)
  wstate      non-trainable loss-weighting state (LPS history, ...)
  opt         optax state over {"model": params, "weighting": wparams}

Every model branch is a *pure* nested dict of arrays ({"encoder": {"blocks":
{0: {"attn": {"qkv": {"kernel": Array}}}}}}), not an nnx.State of Variable
leaves: a jitted call flattens and unflattens its arguments on the host at
every dispatch, and a Variable costs ~30x a dict entry there (benchmarks/
train_step.py --host_overhead). The modules are rebuilt inside jit with
``nnx.merge(graphdef, params, batch_stats)`` from the static graphdefs in
`ModelDef`, which costs nothing per step once traced.

Keeping the model as split state and jitting plain functions over it (rather
than nnx.jit over objects) gives explicit shardings and donation, no Python
graph traversal per step, and tree-mode-safe code (style.md section 8).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import optax

from mtdense_jax.models import multitask
from mtdense_jax.train import sharding as shd

PyTree = Any
State = dict[str, Any]


DEFAULT_TRAINABLE = ("Param",)


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """Static halves of the split model: one graphdef per mode, and the names
  of the trainable variable classes (to split the model again in jit)."""
  train: nnx.GraphDef
  eval: nnx.GraphDef
  trainable: tuple[str, ...] = DEFAULT_TRAINABLE


def trainable_filter(names: tuple[str, ...] = DEFAULT_TRAINABLE):
  """nnx filter: variables whose class or a base class is named in `names`
  (so a subclass of nnx.Param is trainable unless declared otherwise)."""
  names = tuple(names)

  def pred(path, x):
    del path
    return any(c.__name__ in names for c in type(x).__mro__)
  return pred


def merge(graphdef: nnx.GraphDef, params: PyTree,
          batch_stats: PyTree) -> nnx.Module:
  """The module from its graphdef and the two pure-dict branches."""
  return nnx.merge(graphdef, params, batch_stats, copy=True)


def non_trainable(model: nnx.Module, trainable: tuple[str, ...]) -> PyTree:
  """The pure dict of every non-trainable variable (after a forward)."""
  return nnx.to_pure_dict(nnx.state(model, nnx.Not(trainable_filter(
      trainable))))


def model_factory(model_cfg: Mapping[str, Any], task_outputs: Mapping[str, int],
                  img_size: tuple[int, int],
                  seed: int) -> Callable[[], multitask.MultiTaskModel]:
  def make():
    return multitask.build_model(model_cfg, task_outputs=task_outputs,
                                 img_size=img_size, rngs=nnx.Rngs(seed))
  return make


def split_model(model: nnx.Module, trainable: tuple[str, ...] =
                DEFAULT_TRAINABLE) -> tuple[nnx.GraphDef, PyTree, PyTree]:
  """model -> (graphdef, trainable pure dict, non-trainable pure dict)."""
  graphdef, rng, params, rest = nnx.split(
      model, nnx.RngState, trainable_filter(trainable), ...)
  if jax.tree.leaves(rng):
    raise ValueError(
        f"Model stores nnx.Rngs state {rng}. Stochastic layers must take "
        "rngs at call time.")
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def model_defs(factory: Callable[[], nnx.Module],
               trainable: tuple[str, ...] = DEFAULT_TRAINABLE
               ) -> tuple[ModelDef, PyTree, PyTree]:
  """Abstract model -> (graphdefs for train/eval, abstract params, the
  abstract non-trainable variables), the latter two as pure dicts."""
  trainable = tuple(trainable)
  abstract = nnx.eval_shape(factory)
  abstract.train()
  g_train, params, stats = split_model(abstract, trainable)
  abstract.eval()
  g_eval, _, _ = split_model(abstract, trainable)
  return ModelDef(g_train, g_eval, trainable), params, stats


def init_state(factory: Callable[[], nnx.Module], tx: optax.GradientTransformation,
               weighting: Any, task_names: list[str], mesh: Mesh,
               rules=(), trainable: tuple[str, ...] = DEFAULT_TRAINABLE
               ) -> tuple[ModelDef, State, State]:
  """Builds the sharded train state; returns (model defs, state, shardings).

  One abstract trace of the model (`model_defs`: graphdefs and shapes),
  then ONE jitted program that initialises every variable, the weighting
  and the optimizer directly into their shardings (no per-initialiser
  compiles, no host copy). ``rules`` is ``config.sharding`` (strategy,
  rules, min_size) or a bare (regex, spec) rule table; ``trainable`` is
  ``config.model.trainable``.
  """
  defs, abs_params, abs_stats = model_defs(factory, trainable)

  def rest(params):
    wparams, wstate = weighting.init(task_names)
    return wparams, wstate, tx.init({"model": params, "weighting": wparams})

  # The optimizer and weighting state from the abstract params: shapes
  # without tracing the model a second time.
  wparams, wstate, opt = jax.eval_shape(rest, abs_params)
  abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32),
              "params": abs_params, "batch_stats": abs_stats,
              "wparams": wparams, "wstate": wstate, "opt": opt}
  shardings = state_shardings(abstract, mesh, rules)

  def init():
    _, params, stats = split_model(factory(), defs.trainable)
    wparams, wstate, opt = rest(params)
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "batch_stats": stats, "wparams": wparams, "wstate": wstate,
            "opt": opt}

  # Default XLA options on purpose: at optimisation level 0 this program
  # compiles ~4x faster on CPU, but its values then depend on the mesh at
  # float-rounding level (tests/test_sharding.py fsdp_remat: 8 devices no
  # longer equal 1). The persistent cache makes it a one-time cost.
  state = jax.jit(init, out_shardings=shardings)()
  return defs, state, shardings


def state_shardings(abstract: State, mesh: Mesh, rules=()) -> State:
  """Params and their optimizer moments follow the sharding config; the rest
  is replicated. Optimizer moments mirror the params' paths (for ``rules``)
  and shapes (for ``fsdp``), so each moment gets its parameter's spec."""
  out = {k: jax.tree.map(lambda _: shd.replicated(mesh), v)
         for k, v in abstract.items()}
  out["params"] = shd.strategy_shardings(abstract["params"], mesh, rules)
  out["opt"] = shd.strategy_shardings(abstract["opt"], mesh, rules)
  return out
