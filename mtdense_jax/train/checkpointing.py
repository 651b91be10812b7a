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

Failures end a run with one ``CheckpointError`` line naming the directory,
the step and the cause (``Saver``); a resume skips a corrupt newest step for
the newest one that restores completely (``restore_latest``), and a
checkpoint of another model is reported as a short diff of parameter paths
and config keys (``compatibility_report``) instead of orbax's tree dump.
"""

from __future__ import annotations

import functools
import logging
import pathlib
import shutil
import sys
from typing import Any, Callable

import grain
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

# Re-exported: callers use ckpt.CheckpointError, ckpt.assert_finite, ...
from mtdense_jax.train.ckpt_checks import (  # pylint: disable=unused-import
    CheckpointError,
    assert_finite,
    check_writable,
    committed_steps,
    compatibility_report,
    config_diff,
    diagnose,
    step_dir,
    _cause,
    _incompatible,
    _unrestorable,
)

from mtdense_jax.train import partial_restore

PyTree = Any
_PARAM_KEYS = ("params", "batch_stats")


def manager(directory: str | pathlib.Path, *, max_to_keep: int = 3,
            save_every: int | None = None, async_save: bool = True,
            read_only: bool = False) -> ocp.CheckpointManager:
  # Step directories are created synchronously: created in the background,
  # a failure (read-only or full disk) left the save waiting 20 minutes for a
  # "directory created" signal that never came.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, save_interval_steps=save_every or 1,
      enable_async_checkpointing=async_save, read_only=read_only,
      create=not read_only,
      async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
  directory = pathlib.Path(directory).absolute()
  if not read_only:
    check_writable(directory)
  try:
    return ocp.CheckpointManager(directory, options=options)
  except OSError as e:
    raise CheckpointError(
        f"Cannot open checkpoints directory {directory}: {_cause(e)}") from e


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
                   step: int | None = None,
                   log: Callable[[str], None] = print,
                   config: dict | None = None) -> tuple[dict, int]:
  """Params-only restore for evaluation and inference.

  Args:
    directory: a checkpoints directory (``WORKDIR/checkpoints``).
    abstract_params: {"params": ..., "batch_stats": ...} of
      jax.ShapeDtypeStruct (with shardings) describing the model.
    step: a step to restore (a corrupt one raises CheckpointError naming
      the file); default the newest that restores completely.
    log: where skipped corrupt steps are reported.
    config: the current config as a dict, to name the keys that differ
      when the checkpoint does not fit the model.
  Returns:
    (params dict, step restored).
  """
  mngr = manager(directory, read_only=True, async_save=False)
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f"No checkpoint found in {directory}.")
  if step is not None and step not in steps:
    raise FileNotFoundError(f"No checkpoint step {step} in {directory}; it "
                            f"has steps {sorted(steps)}.")
  skipped = []
  for s in [step] if step is not None else steps:
    try:
      report = compatibility_report(directory, s, {"params": abstract_params},
                                    config)
      if report:
        raise _incompatible(directory, s, report)
      items = {"params": ocp.args.StandardRestore(abstract_params)}
      try:
        out = mngr.restore(s, args=ocp.args.Composite(**items))
      except (ValueError, KeyError, TypeError) as e:
        out = _restore_other_layout(mngr.directory, s, items, e)
      return out["params"], s
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      reason = diagnose(directory, s, e)
      if reason is None:
        raise _unrestorable(directory, s, e) from e
      if step is not None:
        raise CheckpointError(
            f"Checkpoint step {s} cannot be restored: {reason}.") from e
      skipped.append(f"step {s} ({reason})")
      log(f"Skipping corrupt checkpoint step {s}: {reason}.")
  raise CheckpointError(f"No checkpoint in {directory} restores completely: "
                        f"{'; '.join(skipped)}.")


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


# ---------------------------------------------------------------------------
# Failures that name the culprit.


class _OrbaxTracebacks(logging.Filter):
  """Keeps orbax's error lines but drops their tracebacks: a failed save is
  reported once, by Saver, instead of in thousands of lines."""

  failed = False   # set once a save failed: its leftovers are noise

  def filter(self, record: logging.LogRecord) -> bool:
    if (_OrbaxTracebacks.failed and record.name == "asyncio" and
        "exception was never retrieved" in str(record.msg)):
      return False
    if "/orbax/" in record.pathname and record.exc_info:
      record.msg = f"{record.msg} ({record.exc_info[1]!r:.200})"
      record.exc_info = record.exc_text = None
    return True


def _is_closed_loop_noise(exc: BaseException | None) -> bool:
  # tensorstore completes futures of a failed save after orbax closed their
  # event loops; each completion printed a traceback (hundreds per failure).
  return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


@functools.cache
def _quiet_failed_saves() -> None:
  logging.getLogger("absl").addFilter(_OrbaxTracebacks())
  for handler in logging.getLogger().handlers:
    handler.addFilter(_OrbaxTracebacks())
  unraisable, excepthook = sys.unraisablehook, sys.excepthook

  def on_unraisable(u):
    if not _is_closed_loop_noise(u.exc_value):
      unraisable(u)

  def on_except(kind, value, tb):
    if not _is_closed_loop_noise(value):
      excepthook(kind, value, tb)

  sys.unraisablehook, sys.excepthook = on_unraisable, on_except


class Saver:
  """Saves through a CheckpointManager so that a failed save, foreground or
  background, raises one CheckpointError (directory, step, cause) and
  never leaves the run waiting on orbax's futures."""

  _live: list["Saver"] = []

  def __init__(self, mngr: ocp.CheckpointManager):
    self.mngr = mngr
    self.pending: int | None = None   # step of the save in flight
    self.last_saved: int | None = None
    Saver._live.append(self)
    _quiet_failed_saves()

  def _error(self, step: int, e: BaseException) -> CheckpointError:
    _OrbaxTracebacks.failed = True
    # The partial step directory only takes space (maybe on a full disk).
    shutil.rmtree(pathlib.Path(self.mngr.directory) /
                  f"{step}.orbax-checkpoint-tmp", ignore_errors=True)
    good = [s for s in committed_steps(self.mngr.directory) if s != step]
    kept = (f"earlier checkpoints are intact (latest: step {good[-1]})"
            if good else "no earlier checkpoint exists")
    return CheckpointError(
        f"Checkpoint save failed at step {step} in {self.mngr.directory}: "
        f"{_cause(e)}; {kept}.")

  def wait(self) -> None:
    """Waits for the save in flight; its failure raises CheckpointError."""
    if self.pending is None:
      return
    step, self.pending = self.pending, None
    try:
      self.mngr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._error(step, e) from e

  def save(self, step: int, state: dict, data_iter: Any = None,
           meta: dict | None = None, force: bool = False, **kw) -> bool:
    self.wait()
    check_writable(self.mngr.directory, step)
    try:
      saved = save(self.mngr, step, state, data_iter, meta, force, **kw)
    except Exception as e:  # pylint: disable=broad-except
      raise self._error(step, e) from e
    if saved:
      self.pending = self.last_saved = step
    return saved

  def assert_finite(self, state: dict, step: int) -> None:
    assert_finite(state, step, self.mngr.directory)

  def close(self) -> None:
    try:
      self.wait()
      self.mngr.close()
    finally:
      if self in Saver._live:
        Saver._live.remove(self)

  def settle(self) -> None:
    """After another error: lets the save in flight (of a state that was
    checked finite) finish, reporting but not raising its failure, and
    closes, so no background thread meets a shut-down interpreter. With
    nothing in flight it does nothing (closing may wait on other hosts)."""
    if self.pending is None:
      if self in Saver._live:
        Saver._live.remove(self)
      return
    try:
      self.close()
    except Exception as e:  # pylint: disable=broad-except
      print(f"Error: {e}", file=sys.stderr, flush=True)


def settle_saves_on_error(fn: Callable) -> Callable:
  """Decorates a run: if it raises, Savers it opened finish cleanly first
  (no "cannot schedule new futures after shutdown", no *-tmp dirs)."""
  @functools.wraps(fn)
  def run(*args, **kwargs):
    before = list(Saver._live)
    try:
      return fn(*args, **kwargs)
    except BaseException:
      for saver in [s for s in Saver._live if s not in before]:
        saver.settle()
      raise
  return run


# ---------------------------------------------------------------------------
# Never commit a non-finite state.


# ---------------------------------------------------------------------------
# Restore: compatibility report, corrupt-step fallback.


def restore_latest(mngr: ocp.CheckpointManager, state: dict,
                   shardings: dict, data_iter: Any = None,
                   config: dict | None = None, set_aside: bool = True,
                   log: Callable[[str], None] = print
                   ) -> tuple[dict, int] | None:
  """Restores the newest checkpoint that restores completely.

  A checkpoint of another model raises CheckpointError with a short report
  (no fallback: every step would mismatch). A corrupt step is reported,
  renamed to ``<step>.corrupt`` (process 0, when `set_aside`) so training
  can save that step again, and the next older one is tried. Returns
  (state, step), or None when there is no checkpoint.
  """
  directory = pathlib.Path(mngr.directory)
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    return None
  params, rest = _split(state)
  skipped = []
  for step in steps:
    try:
      report = compatibility_report(directory, step,
                                    {"params": params, "train": rest}, config)
    except Exception as e:  # pylint: disable=broad-except
      report, error = None, e
    else:
      if report:
        raise _incompatible(directory, step, report)
      try:
        return restore(mngr, state, shardings, data_iter, step), step
      except Exception as e:  # pylint: disable=broad-except
        error = e
    reason = diagnose(directory, step, error)
    if reason is None:   # not a damaged file: moving steps aside won't help
      raise _unrestorable(directory, step, error) from error
    skipped.append(f"step {step} ({reason})")
    aside = ""
    if set_aside and jax.process_index() == 0:
      target, n = directory / f"{step}.corrupt", 0
      while target.exists():
        n += 1
        target = directory / f"{step}.corrupt.{n}"
      step_dir(directory, step).rename(target)
      aside = f"; moved to {target}"
    log(f"Skipping corrupt checkpoint step {step}: {reason}{aside}.")
    if set_aside:
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"mtdense_jax:set_aside:{step}")
      mngr.reload()
  raise CheckpointError(
      f"No checkpoint in {directory} restores completely: "
      f"{'; '.join(skipped)}. Move the directory aside to train from "
      "scratch.")


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
