"""Mesh, parameter sharding rules and global batches.

One mesh over every device of every process with a ``data`` axis (and an
optional ``model`` axis). Batches are sharded over ``data`` only (a ``model``
axis > 1 holds replicas of each data shard). Parameters, and the optimizer
moments that mirror them, follow ``config.sharding.strategy`` (big_vision
``sharding_strategy``, google-research/big_vision ``big_vision/sharding.py``):

  replicate  every leaf on every device (default).
  fsdp       ZeRO-3 style: the largest dim divisible by the ``data`` axis of
             every leaf with >= ``min_size`` elements is split over ``data``;
             XLA all-gathers it for the forward pass and reduce-scatters the
             gradient. The spec depends only on the shape, so Adam's mu/nu get
             the same spec as their parameter.
  rules      ``config.sharding.rules``: (regex, spec) pairs on the path, first
             match wins (``model`` usable for tensor parallelism); leaves no
             rule matches are replicated.

Host-local batches become global ``jax.Array``s at exactly one place,
``global_batch``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

PyTree = Any


def make_mesh(mesh_cfg: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh ('data', 'model'); data=-1 takes all devices left over."""
  devices = list(jax.devices() if devices is None else devices)
  mesh_cfg = dict(mesh_cfg or {})
  n_model = int(mesh_cfg.get("model", 1))
  n_data = int(mesh_cfg.get("data", -1))
  if n_data == -1:
    n_data = len(devices) // n_model
  if n_data * n_model != len(devices):
    raise ValueError(
        f"config.mesh data={n_data} x model={n_model} does not match the "
        f"{len(devices)} available devices.")
  grid = np.asarray(devices).reshape(n_data, n_model)
  return Mesh(grid, ("data", "model"))


def path_str(path: tuple) -> str:
  """A tree path as 'encoder/blocks/0/attn/qkv/kernel'."""
  parts = []
  for k in path:
    name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
    if name == "value":  # nnx.Variable's payload attribute.
      continue
    parts.append(str(name))
  return "/".join(parts)


def _spec_fits(shape: tuple[int, ...], spec: tuple, mesh: Mesh) -> bool:
  if len(spec) > len(shape):
    return False
  for dim, axis in zip(shape, spec):
    if axis is not None and dim % mesh.shape[axis] != 0:
      return False
  return True


def tree_shardings(tree: PyTree, mesh: Mesh,
                   rules: Sequence[tuple[str, tuple]] = ()) -> PyTree:
  """NamedSharding per leaf: first regex (re.search) on the path wins.

  A rule whose spec does not divide the leaf's shape falls back to
  replication for that leaf (logged), so one rule table serves every size.
  """
  compiled = [(re.compile(pat), tuple(spec)) for pat, spec in rules]

  def one(path, leaf):
    name = path_str(path)
    for pat, spec in compiled:
      if pat.search(name):
        if _spec_fits(np.shape(leaf), spec, mesh):
          return NamedSharding(mesh, P(*spec))
        logging.info("sharding rule %s does not fit %s %s; replicating",
                     pat.pattern, name, np.shape(leaf))
        break
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(one, tree)


STRATEGIES = ("replicate", "fsdp", "rules")


def fsdp_spec(shape: tuple[int, ...], mesh: Mesh, axis: str = "data",
              min_size: int = 2 ** 14) -> P:
  """Splits the largest dim divisible by the ``axis`` size (big_vision fsdp).

  Ties go to the last such dim (the output dim of a kernel), so a Linear's
  kernel and bias of the same width shard alike.
  """
  n = mesh.shape[axis]
  if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  dims = [i for i, d in enumerate(shape) if d % n == 0]
  if not dims:
    return P()
  best = max(dims, key=lambda i: (shape[i], i))
  spec = [None] * len(shape)
  spec[best] = axis
  return P(*spec)


def strategy_shardings(tree: PyTree, mesh: Mesh,
                       cfg: Mapping[str, Any] | Sequence | None = None
                       ) -> PyTree:
  """NamedSharding per leaf from a ``config.sharding`` dict.

  ``cfg`` may also be a bare rule table (the older ``rules=`` argument).
  """
  if cfg is None or not hasattr(cfg, "get"):
    return tree_shardings(tree, mesh, tuple(cfg or ()))
  strategy = cfg.get("strategy", "replicate")
  rules = tuple(cfg.get("rules", ()) or ())
  if strategy == "replicate" and rules:
    strategy = "rules"   # Configs written before strategies existed.
  if strategy == "replicate":
    return jax.tree.map(lambda _: replicated(mesh), tree)
  if strategy == "rules":
    return tree_shardings(tree, mesh, rules)
  if strategy == "fsdp":
    min_size = int(cfg.get("min_size", 2 ** 14))
    return jax.tree.map(
        lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), mesh,
                                                min_size=min_size)), tree)
  raise ValueError(f"config.sharding.strategy={strategy!r}; expected one "
                   f"of {STRATEGIES}.")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
  """Process-local numpy batch -> global jax.Arrays sharded over 'data'."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}
