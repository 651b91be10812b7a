"""Mesh, parameter sharding rules and global batches.

One mesh over every device of every process with a ``data`` axis (and an
optional ``model`` axis). Batches are sharded over ``data``; parameters follow
regex rules on their paths (big_vision ``sharding_strategy`` style), default
replicated. Host-local batches become global ``jax.Array``s at exactly one
place, ``global_batch``.
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


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
  """Process-local numpy batch -> global jax.Arrays sharded over 'data'."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}
