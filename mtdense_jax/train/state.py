"""Train state: built abstractly first, then materialised already sharded.

The state is a plain dict (big_vision style) of pytrees:

  step        int32 scalar: optimizer steps taken (drives schedule and RNG)
  params      nnx.State of the model's nnx.Param variables
  batch_stats nnx.State of nnx.BatchStat (BatchNorm running statistics)
  wparams     trainable parameters of the loss weighting (may be empty)
  wstate      non-trainable loss-weighting state (LPS history, ...)
  opt         optax state over {"model": params, "weighting": wparams}

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


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """Static halves of the split model: one graphdef per mode."""
  train: nnx.GraphDef
  eval: nnx.GraphDef


def model_factory(model_cfg: Mapping[str, Any], task_outputs: Mapping[str, int],
                  img_size: tuple[int, int],
                  seed: int) -> Callable[[], multitask.MultiTaskModel]:
  def make():
    return multitask.build_model(model_cfg, task_outputs=task_outputs,
                                 img_size=img_size, rngs=nnx.Rngs(seed))
  return make


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, PyTree, PyTree]:
  graphdef, params, batch_stats, rest = nnx.split(
      model, nnx.Param, nnx.BatchStat, ...)
  if jax.tree.leaves(rest):
    raise ValueError(
        "Model holds variables other than Param/BatchStat (e.g. stored "
        f"nnx.Rngs): {rest}. Stochastic layers must take rngs at call time.")
  return graphdef, params, batch_stats


def model_defs(factory: Callable[[], nnx.Module]) -> tuple[ModelDef, PyTree,
                                                           PyTree]:
  """Abstract model -> (graphdefs for train/eval, abstract params, stats)."""
  abstract = nnx.eval_shape(factory)
  abstract.train()
  g_train, params, stats = split_model(abstract)
  abstract.eval()
  g_eval, _, _ = split_model(abstract)
  return ModelDef(g_train, g_eval), params, stats


def init_state(factory: Callable[[], nnx.Module], tx: optax.GradientTransformation,
               weighting: Any, task_names: list[str], mesh: Mesh,
               rules=()) -> tuple[ModelDef, State, State]:
  """Builds the sharded train state; returns (model defs, state, shardings).

  ``rules`` is ``config.sharding`` (strategy, rules, min_size) or a bare
  (regex, spec) rule table.
  """
  defs, abs_params, abs_stats = model_defs(factory)

  def init():
    _, params, stats = split_model(factory())
    wparams, wstate = weighting.init(task_names)
    opt = tx.init({"model": params, "weighting": wparams})
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "batch_stats": stats, "wparams": wparams, "wstate": wstate,
            "opt": opt}

  abstract = jax.eval_shape(init)
  shardings = state_shardings(abstract, mesh, rules)
  state = jax.jit(init, out_shardings=shardings)()
  del abs_params, abs_stats
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
