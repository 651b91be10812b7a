"""Orbax checkpoints: async, keep-N, automatic resume, params-only restore.

Layout of ``WORKDIR/checkpoints/<step>/``:

  params  {"params": trainable model variables, "batch_stats": every other
          model variable} as pure nested dicts of arrays - everything
          evaluation needs, restorable alone (``restore_params``); weight
          converters write this item too.
  train   {"step", "wparams", "wstate", "opt"} - the rest of the train state
  data    the grain iterator state, so a resumed run sees the same batches
  meta    JSON: step, the config the run was started with and
          "dataset_meta" (tasks, head sizes, image size, mean/std) for
          inference

Checkpoints written when the state held nnx.Variable leaves (paths ending in
'/value') still restore: a structure mismatch falls back to restoring by
parameter path (train/partial_restore.py). ``keep_best`` keeps the params of
the best evaluation in a directory of its own.

Orbax writes to a temporary directory and renames on commit, so a crash
mid-save never leaves a checkpoint that looks complete.
"""

from __future__ import annotations

import pathlib
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from mtdense_jax.train import partial_restore

PyTree = Any
_PARAM_KEYS = ("params", "batch_stats")


def manager(directory: str | pathlib.Path, *, max_to_keep: int = 3,
            save_every: int | None = None, async_save: bool = True,
            read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, save_interval_steps=save_every or 1,
      enable_async_checkpointing=async_save, read_only=read_only,
      create=not read_only)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(),
                               options=options)


def _split(state: dict) -> tuple[dict, dict]:
  params = {k: state[k] for k in _PARAM_KEYS}
  rest = {k: v for k, v in state.items() if k not in _PARAM_KEYS}
  return params, rest


def abstract(tree: PyTree, shardings: PyTree) -> PyTree:
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
      tree, shardings)


def save(mngr: ocp.CheckpointManager, step: int, state: dict,
         data_iter: Any = None, meta: dict | None = None,
         force: bool = False) -> bool:
  params, rest = _split(state)
  items = {"params": ocp.args.StandardSave(params),
           "train": ocp.args.StandardSave(rest),
           "meta": ocp.args.JsonSave(dict(meta or {}, step=int(step)))}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iter)
  return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def restore(mngr: ocp.CheckpointManager, state: dict, shardings: dict,
            data_iter: Any = None, step: int | None = None) -> dict:
  """Restores the full train state (sharded like `shardings`) and, in
  place, the data iterator."""
  step = mngr.latest_step() if step is None else step
  params, rest = _split(state)
  p_sh, r_sh = _split(shardings)
  items = {"params": ocp.args.StandardRestore(abstract(params, p_sh)),
           "train": ocp.args.StandardRestore(abstract(rest, r_sh))}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  try:
    out = mngr.restore(step, args=ocp.args.Composite(**items))
  except (ValueError, KeyError, TypeError) as e:
    out = _restore_other_layout(mngr.directory, step, items, e)
  return {**out["params"], **out["train"]}


def restore_params(directory: str | pathlib.Path, abstract_params: dict,
                   step: int | None = None) -> tuple[dict, int]:
  """Params-only restore for evaluation and inference.

  Args:
    directory: a checkpoints directory (``WORKDIR/checkpoints``).
    abstract_params: {"params": ..., "batch_stats": ...} of
      jax.ShapeDtypeStruct (with shardings) describing the model.
    step: a step to restore; default the latest.
  Returns:
    (params dict, step restored).
  """
  mngr = manager(directory, read_only=True, async_save=False)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"No checkpoint found in {directory}.")
  items = {"params": ocp.args.StandardRestore(abstract_params)}
  try:
    out = mngr.restore(step, args=ocp.args.Composite(**items))
  except (ValueError, KeyError, TypeError) as e:
    out = _restore_other_layout(mngr.directory, step, items, e)
  return out["params"], step


def _restore_other_layout(directory, step: int, items: dict,
                          error: Exception) -> dict:
  """Restores the StandardRestore items by parameter path instead of by
  tree structure: checkpoints written when the state held nnx.Variable
  leaves ('.../kernel/value'), or any layout naming the same arrays. Other
  items (the data iterator) are then restored as usual. A real mismatch
  raises one message listing the missing and mis-shaped paths."""
  step_dir = pathlib.Path(directory) / str(step)
  out = {}
  for name, arg in items.items():
    if isinstance(arg, ocp.args.StandardRestore):
      try:
        saved = partial_restore.read_item(step_dir / name)
      except Exception:  # pylint: disable=broad-except
        raise error from None
      out[name], _ = partial_restore.restore_by_path(
          arg.item, saved, source=f"{step_dir}/{name}")
  rest = {k: v for k, v in items.items() if k not in out}
  if rest:
    mngr = manager(directory, read_only=True, async_save=False)
    out.update(mngr.restore(step, args=ocp.args.Composite(**rest)))
  return out


def save_params(directory: str | pathlib.Path, params: dict,
                step: int = 0, meta: dict | None = None) -> None:
  """Writes a params-only checkpoint (used by the weight converters); it is
  restorable by `restore_params` and usable by --mode eval."""
  mngr = manager(directory, async_save=False)
  mngr.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params),
      meta=ocp.args.JsonSave(dict(meta or {}, step=int(step)))))
  mngr.wait_until_finished()
  mngr.close()


def keep_best(directory: str | pathlib.Path, step: int, state: dict,
              metrics: dict, metric: str, mode: str = "max",
              meta: dict | None = None) -> bool:
  """Keeps the params of the best evaluation so far in `directory` (a
  params-only checkpoint, restorable like any other); returns whether this
  evaluation was the new best. The best value lives in its meta item."""
  if metric not in metrics:
    raise KeyError(f"config.train.keep_best_metric={metric!r} is not an "
                   f"evaluation metric; have {sorted(metrics)}.")
  if mode not in ("max", "min"):
    raise ValueError(f"config.train.keep_best_mode={mode!r}; 'max' or 'min'.")
  value = float(metrics[metric])
  directory = pathlib.Path(directory)
  best = None
  if directory.exists():
    mngr = manager(directory, read_only=True, async_save=False)
    last = mngr.latest_step()
    if last is not None:
      best = mngr.restore(last, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"].get("best")
    mngr.close()
  if best is not None and not (value > best if mode == "max"
                               else value < best):
    return False
  params, _ = _split(state)
  mngr = manager(directory, max_to_keep=1, async_save=False)
  mngr.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params),
      meta=ocp.args.JsonSave(dict(meta or {}, step=int(step), best=value,
                                  metric=metric))), force=True)
  mngr.wait_until_finished()
  mngr.close()
  return True
