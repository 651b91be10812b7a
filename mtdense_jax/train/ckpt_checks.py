"""Checks behind safe checkpointing: errors that name the culprit, the
finite-state guard, and the diagnosis of a stored step (which file is
damaged; which parameters or config keys differ from the current model).

Pure functions over directories and pytrees, kept apart from the save/restore
code in ``checkpointing.py`` (which re-exports the public names).
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import socket
from typing import Any

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mtdense_jax.train import partial_restore


class CheckpointError(RuntimeError):
  """A checkpoint cannot be written or read; the message names the
  directory or file, the step and the cause, on one line."""


_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
           errno.EPERM, errno.EIO, errno.ENOTDIR, errno.EEXIST)


def _chain(e: BaseException):
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def _cause(e: BaseException) -> str:
  """The root cause of `e` in a few words: an OS error and its file, else the
  first line of the innermost message (tensorstore's are pages long)."""
  for x in _chain(e):
    if isinstance(x, OSError) and x.strerror:
      return f"{x.strerror}: {x.filename}" if x.filename else x.strerror
  text = " ".join(str(x) for x in _chain(e))
  for code in _ERRNOS:   # OS errors that tensorstore wraps in a ValueError.
    if os.strerror(code) in text:
      where = re.search(r'Failed (?:writing|reading|to open): "([^"]+)"', text)
      return os.strerror(code) + (f" ({where.group(1)})" if where else "")
  x = [x for x in _chain(e) if str(x).strip()][-1:] or [e]
  line = (str(x[0]).strip().splitlines() or [""])[0]
  return f"{type(x[0]).__name__}: {line[:300]}"


def committed_steps(directory: str | pathlib.Path) -> list[int]:
  """Steps with a finished checkpoint on disk (temporary dirs excluded)."""
  d = pathlib.Path(directory)
  if not d.is_dir():
    return []
  return sorted(int(p.name) for p in d.iterdir()
                if p.name.isdigit() and p.is_dir())


def check_writable(directory: str | pathlib.Path, step: int | None = None
                   ) -> None:
  """Creates `directory` and a probe file in it, so an unwritable or
  uncreatable checkpoints dir fails here, in the foreground, with its path."""
  d = pathlib.Path(directory)
  probe = d / f".write_probe.{socket.gethostname()}.{os.getpid()}"
  try:
    d.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b"ok")
    probe.unlink()
  except OSError as e:
    at = f" at step {step}" if step is not None else ""
    cause = ("it exists and is not a directory" if d.exists() and
             not d.is_dir() else _cause(e))
    raise CheckpointError(
        f"Cannot write checkpoints to {d}{at}: {cause}. Free space or fix "
        "the permissions, or pass another --workdir.") from e


@jax.jit
def _all_finite(leaves: list[jax.Array]) -> jax.Array:
  # The float32 sum of squares is finite iff every element is finite and
  # no |x| nears 1e19: a state past that (lr=1e30 gives ~1e30 after one
  # update) is finite but can only produce inf/NaN outputs.
  return jnp.stack([jnp.isfinite(jnp.sum(jnp.square(x.astype(jnp.float32))))
                    for x in leaves])


def assert_finite(state: dict, step: int,
                  directory: str | pathlib.Path | None = None) -> None:
  """Raises FloatingPointError naming non-finite (or overflowing) parameter
  or optimizer leaves; one small jitted reduction, run only at checkpoint
  steps, so a poisoned state is never committed as the last good one."""
  flat = [(p, x) for p, x in jax.tree_util.tree_leaves_with_path(state)
          if jnp.issubdtype(x.dtype, jnp.inexact)]
  if not flat:
    return
  ok = np.asarray(jax.device_get(_all_finite([x for _, x in flat])))
  bad = [partial_restore.path_str(p) for (p, _), good in zip(flat, ok) if not good]
  if bad:
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    good = committed_steps(directory) if directory else []
    kept = (f"the last good checkpoint (step {good[-1]}) is kept" if good
            else "no checkpoint was saved")
    raise FloatingPointError(
        f"Non-finite or overflowing (|x| > ~1e19) parameters or optimizer "
        f"state after step {step} "
        f"({', '.join(bad[:3])}{more}); stopping without saving it, {kept}. "
        "Lower config.optim.lr or set config.optim.grad_clip_norm.")


def step_dir(directory: str | pathlib.Path, step: int) -> pathlib.Path:
  return pathlib.Path(directory) / str(step)


def _json_files(d: pathlib.Path):
  for p in sorted(d.rglob("*")):
    if p.is_file() and (p.suffix == ".json" or p.name in (
        "_METADATA", "_CHECKPOINT_METADATA", "_sharding", "metadata") or
                        p.parent.name == "array_metadatas"):
      yield p


def diagnose(directory: str | pathlib.Path, step: int,
             error: BaseException) -> str | None:
  """Which file of a step directory is broken, and how; None when `error`
  is not a damaged file (then no fallback hides it)."""
  d = step_dir(directory, step)
  for p in sorted(d.rglob("*")):
    if p.is_file() and p.stat().st_size == 0:
      return f"{p} is empty"
  for p in _json_files(d):
    try:
      json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
      return f"{p} is not valid JSON ({e})"
  text = " ".join(str(x) for x in _chain(error))
  m = re.search(r'Error reading "([^"]+)" in OCDBT database at local file '
                r'"([^"]+)"[^:]*: ([^\n]{0,200})', text)
  if m:
    array = m.group(1).rsplit("/", 1)[0]
    return f"{m.group(2)}: array {array} unreadable ({m.group(3).strip()})"
  for x in _chain(error):
    if isinstance(x, FileNotFoundError) and str(d) in str(x.filename):
      return f"{x.filename} is missing"
  return None


def _unrestorable(directory, step: int, error: BaseException
                  ) -> CheckpointError:
  return CheckpointError(f"Checkpoint step {step} in {directory} cannot be "
                         f"restored: {_cause(error)}")


def _shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  return {partial_restore.path_str(p): (tuple(x.shape), str(np.dtype(x.dtype)))
          for p, x in jax.tree_util.tree_leaves_with_path(tree)
          if hasattr(x, "shape")}


def _stored_shapes(item_dir: pathlib.Path) -> dict:
  md = ocp.StandardCheckpointHandler().metadata(epath.Path(item_dir))
  return _shapes(getattr(md, "tree", md))


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def compatibility_report(directory: str | pathlib.Path, step: int,
                         current: dict[str, Any],
                         config: dict | None = None) -> str | None:
  """A short diff between a stored checkpoint and the current model, or
  None when every stored item matches `current` ({item name: tree}).

  Lists missing, unexpected and differently shaped parameter paths (both
  shapes) and the config keys that differ. Unreadable metadata raises (the
  caller treats the step as corrupt).
  """
  lines, limit, total = [], 8, 0
  for item, tree in current.items():
    stored = _stored_shapes(step_dir(directory, step) / item)
    want = _shapes(tree)

    def show(k, info):
      shape, dtype = info
      return f"{shape}" + (f" {dtype}" if dtype != "float32" else "")

    found = [f"missing from the checkpoint: {k} (model {show(k, want[k])})"
             for k in want if k not in stored]
    found += [f"not in the model: {k} (checkpoint {show(k, stored[k])})"
              for k in stored if k not in want]
    found += [f"shape differs: {k}: checkpoint {show(k, stored[k])}, model "
              f"{show(k, want[k])}" for k in want
              if k in stored and stored[k] != want[k]]
    found.sort(key=lambda line: "/params/" not in line.replace(": ", ": /"))
    lines += [f"  {line}" for line in found[:limit - len(lines)]]
    total += len(found)
    if found:   # later items (the optimizer state) mirror the params
      break
  if not total:
    return None
  if total > len(lines):
    lines.append(f"  ... and {total - len(lines)} more")
  if config is not None:
    keys = config_diff(directory, step, config)
    if keys:
      lines.append(f"  config keys that differ: {'; '.join(keys)}")
  return "\n".join(lines)


def config_diff(directory: str | pathlib.Path, step: int,
                config: dict) -> list[str]:
  """'key: stored -> current' for config values that differ (the config
  stored in the step's meta item); [] when none is stored."""
  path = step_dir(directory, step) / "meta" / "metadata"
  if not path.exists():
    return []
  stored = _flat(json.loads(path.read_text()).get("config", {}))
  now = _flat(json.loads(json.dumps(config)))
  keys = sorted(set(stored) | set(now))
  return [f"{k}: {stored.get(k, '<unset>')!r} -> {now.get(k, '<unset>')!r}"
          for k in keys if stored.get(k) != now.get(k)][:12]


def _incompatible(directory, step: int, report: str) -> CheckpointError:
  return CheckpointError(
      f"Checkpoint step {step} in {directory} was written by a different "
      f"model or config; nothing was changed:\n{report}\nUse the config "
      "it was trained with, or another --workdir.")
