"""Restore checkpoint items by parameter path: any layout, any subset.

A leaf's path is its tree path as 'params/encoder/blocks/0/attn/qkv/kernel'
with nnx.Variable's 'value' attribute dropped, so a checkpoint written when
the train state held nnx.State (Variable leaves, saved as '.../kernel/value')
and one written with pure-dict state (today) name each array the same way.
That gives three things with one mechanism:

  * old-layout checkpoints load into the pure-array state;
  * a stage restores a subset of an earlier stage's params ("encoder only,
    drop the heads") by include/exclude regexes on these paths;
  * mismatches (missing, unexpected, wrong shape) are reported by path.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


def path_str(path: tuple) -> str:
  parts = []
  for k in path:
    name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
    if name != "value":     # nnx.Variable's payload attribute.
      parts.append(str(name))
  return "/".join(parts)


def _is_meta_leaf(x) -> bool:
  return hasattr(x, "shape") and hasattr(x, "dtype")


def read_item(item_dir: str | pathlib.Path) -> dict[str, np.ndarray]:
  """{path: host array} of one saved StandardSave item, whatever its layout
  (restored from its own metadata onto one local device)."""
  ckptr = ocp.StandardCheckpointer()
  meta = ckptr.metadata(pathlib.Path(item_dir).absolute())
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=dev),
      tree, is_leaf=_is_meta_leaf)
  restored = ckptr.restore(pathlib.Path(item_dir).absolute(), target)
  flat, _ = jax.tree_util.tree_flatten_with_path(restored)
  return {path_str(p): np.asarray(v) for p, v in flat}


@dataclasses.dataclass
class Report:
  """What a by-path restore did; `str()` is the one-paragraph summary."""
  source: str
  restored: list[str] = dataclasses.field(default_factory=list)
  kept: list[str] = dataclasses.field(default_factory=list)
  missing: list[str] = dataclasses.field(default_factory=list)
  unexpected: list[str] = dataclasses.field(default_factory=list)
  shape: list[str] = dataclasses.field(default_factory=list)

  def __str__(self) -> str:
    def few(xs):
      return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5
                                  else "")
    out = [f"Restored {len(self.restored)} arrays from {self.source}; "
           f"{len(self.kept)} kept as initialised (not selected)"]
    if self.missing:
      out.append(f"missing in checkpoint: {few(self.missing)}")
    if self.shape:
      out.append(f"shape mismatch: {few(self.shape)}")
    if self.unexpected:
      out.append(f"in checkpoint but not in the model: "
                 f"{few(self.unexpected)}")
    return "; ".join(out) + "."


def _selected(name: str, include: Sequence[str], exclude: Sequence[str]
              ) -> bool:
  if include and not any(re.search(p, name) for p in include):
    return False
  return not any(re.search(p, name) for p in exclude)


def restore_by_path(current: PyTree, saved: dict[str, np.ndarray], *,
                    prefix: str = "", include: Sequence[str] = (),
                    exclude: Sequence[str] = (), strict: bool = True,
                    source: str = "checkpoint") -> tuple[PyTree, Report]:
  """`current` with each selected leaf replaced by the saved array of the
  same path (placed with the current leaf's sharding).

  ``prefix`` is prepended to `current`'s paths for matching and rules
  ("params/" for the params branch). ``include``/``exclude``: regexes
  (re.search) on the prefixed path; default all. ``strict``: a selected
  leaf missing from the checkpoint or of another shape raises ValueError
  naming them; otherwise it keeps its current value and is reported.
  """
  report = Report(source)
  flat, treedef = jax.tree_util.tree_flatten_with_path(current)
  names = [prefix + path_str(p) for p, _ in flat]
  chosen = set()
  leaves = []
  for name, (_, leaf) in zip(names, flat):
    if not _selected(name, include, exclude):
      report.kept.append(name)
      leaves.append(leaf)
      continue
    chosen.add(name)
    if name not in saved:
      report.missing.append(name)
      leaves.append(leaf)
    elif tuple(saved[name].shape) != tuple(leaf.shape):
      report.shape.append(f"{name} {tuple(saved[name].shape)} vs model "
                          f"{tuple(leaf.shape)}")
      leaves.append(leaf)
    else:
      value = saved[name].astype(leaf.dtype)
      sharding = getattr(leaf, "sharding", None)
      leaves.append(jax.device_put(value, sharding) if sharding is not None
                    else value)
      report.restored.append(name)
  report.unexpected = sorted(
      k for k in saved if k.startswith(prefix) and k not in names
      and _selected(k, include, exclude))
  if strict and (report.missing or report.shape):
    raise ValueError(f"Cannot restore from {source}: {report}")
  return jax.tree_util.tree_unflatten(treedef, leaves), report


def restore_items(step_dir: str | pathlib.Path, current: dict[str, PyTree],
                  items: dict[str, Sequence[str]], **kw
                  ) -> tuple[dict[str, PyTree], Report]:
  """Restores branches of a train state from a checkpoint step directory.

  ``items`` maps a checkpoint item ("params", "train") to the state keys it
  holds; each state key's leaves are matched under "<key>/" inside it.
  """
  out = dict(current)
  total = Report(str(step_dir))
  for item, keys in items.items():
    saved = read_item(pathlib.Path(step_dir) / item)
    for key in keys:
      if key not in current:
        continue
      out[key], rep = restore_by_path(current[key], saved,
                                      prefix=f"{key}/", source=str(step_dir),
                                      **kw)
      for f in ("restored", "kept", "missing", "unexpected", "shape"):
        getattr(total, f).extend(getattr(rep, f))
  return out, total
