"""Multi-stage training: stages run in order, each a resumable plain run.

``config.stages`` is a list of dicts; stage i runs ``train_and_evaluate`` on
the base config with the stage's changes, in ``WORKDIR/<name>/``:

  name       the stage's directory name (required)
  steps      train.steps and optim.total_steps of the stage
  init_from  an earlier stage's name: on a fresh start the params are
             restored from its latest checkpoint (by path, see `restore`)
  restore    {"include": (regex, ...), "exclude": (regex, ...)} on paths
             'params/encoder/...', 'batch_stats/...': which arrays to take
             from `init_from` (default all); the rest keep their init
  freeze     regexes of parameters the optimizer never changes
             (optim.freeze; paths without the 'params/' prefix)
  override   {"dotted.key": value} for anything else ("optim.lr": 1e-5)

A stage whose checkpoints already reach its steps is skipped, so rerunning
the same command after a crash resumes the unfinished stage (from its own
latest checkpoint) without repeating the finished ones.

After the last stage, a model plugin (the encoder's or the decoder's
module) that defines ``stages_report(config, workdir) -> str`` gets the
whole multi-stage config and prints what only the stages together show
(e.g. a sparsity/accuracy trade-off across them).
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable, Mapping

from mtdense_jax import registry
from mtdense_jax import runtime
from mtdense_jax.train import checkpointing as ckpt
from mtdense_jax.train import partial_restore
from mtdense_jax.train import report

_STAGE_KEYS = {"name", "steps", "init_from", "restore", "freeze", "override"}


def _set(config, dotted: str, value: Any) -> None:
  *parents, leaf = dotted.split(".")
  node = config
  for p in parents:
    node = node[p]
  if leaf not in node:
    raise ValueError(f"config.stages override {dotted!r}: no such key.")
  node[leaf] = value


def stage_config(config, stage: Mapping[str, Any], workdir: pathlib.Path):
  """The base config with one stage's changes (and no stages)."""
  unknown = set(stage) - _STAGE_KEYS
  if unknown or "name" not in stage:
    raise ValueError(f"config.stages entry {dict(stage)}: needs 'name'; "
                     f"unknown keys {sorted(unknown)}; allowed "
                     f"{sorted(_STAGE_KEYS)}.")
  cfg = config.copy_and_resolve_references()
  cfg.stages = ()
  if stage.get("steps"):
    cfg.train.steps = cfg.optim.total_steps = int(stage["steps"])
  if stage.get("freeze") is not None:
    cfg.optim.freeze = tuple(stage["freeze"])
  for key, value in dict(stage.get("override", {}) or {}).items():
    _set(cfg, key, value)
  if stage.get("init_from"):
    cfg.init_checkpoint = str(workdir / stage["init_from"] / "checkpoints")
    rules = dict(stage.get("restore", {}) or {})
    cfg.init_restore.include = tuple(rules.get("include", ()))
    cfg.init_restore.exclude = tuple(rules.get("exclude", ()))
  return cfg


def run(config, workdir: str | pathlib.Path,
        train_fn: Callable[[Any, str], dict]) -> dict[str, float]:
  """Runs every stage (skipping completed ones); returns the last metrics.

  ``train_fn`` is ``loop.train_and_evaluate`` (passed in: loop imports this
  module)."""
  workdir = pathlib.Path(workdir)
  names = [s.get("name") for s in config.stages]
  metrics = {}
  for i, stage in enumerate(config.stages):
    init_from = stage.get("init_from")
    if init_from and init_from not in names[:i]:
      raise ValueError(f"config.stages[{i}] ({stage.get('name')!r}) "
                       f"init_from={init_from!r} is not an earlier stage; "
                       f"earlier: {names[:i]}.")
    cfg = stage_config(config, stage, workdir)
    sdir = workdir / stage["name"]
    done = _latest(sdir / "checkpoints")
    if done is not None and done >= cfg.train.steps:
      print(f"Stage {stage['name']!r} complete (step {done}); skipping.",
            flush=True)
      continue
    print(f"Stage {i + 1}/{len(names)} {stage['name']!r} in {sdir}",
          flush=True)
    metrics = train_fn(cfg, str(sdir))
    if runtime.stop_requested():   # preempted mid-stage: rerun resumes it
      break
  if not runtime.stop_requested():
    for text in plugin_reports(config, workdir):
      report.say(text)
  return metrics


def plugin_reports(config, workdir: pathlib.Path) -> list[str]:
  """The ``stages_report`` texts of the model's plugins (see above)."""
  out = []
  for kind in ("encoder", "decoder"):
    module = registry.lookup(kind, config.model[kind])
    fn = getattr(module, "stages_report", None)
    if fn is not None:
      out.append(fn(config, workdir))
  return out


def _latest(directory: pathlib.Path) -> int | None:
  if not directory.exists():
    return None
  mngr = ckpt.manager(directory, read_only=True, async_save=False)
  step = mngr.latest_step()
  mngr.close()
  return step


def restore(config, state: dict, shardings: dict) -> dict:
  """Fresh-start init from ``config.init_checkpoint``: the params item of
  its latest step, by path, filtered by ``config.init_restore`` rules;
  prints what was restored, kept and mismatched (a selected array that is
  missing or mis-shaped is an error naming it)."""
  del shardings   # restore_by_path keeps each leaf's current sharding.
  directory = pathlib.Path(config.init_checkpoint)
  step = _latest(directory)
  if step is None:
    raise FileNotFoundError(f"config.init_checkpoint={directory}: no "
                            "checkpoint there.")
  rules = config.get("init_restore", {}) or {}
  out, report = partial_restore.restore_items(
      directory / str(step), state, {"params": ("params", "batch_stats")},
      include=tuple(rules.get("include", ())),
      exclude=tuple(rules.get("exclude", ())),
      strict=bool(rules.get("strict", True)))
  print(str(report), flush=True)
  return out
