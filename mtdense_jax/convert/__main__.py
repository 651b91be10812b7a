r"""Converts published checkpoints into a params-only mtdense_jax checkpoint.

  python -m mtdense_jax.convert --from invpt --input invpt_pascal.pth \
      --config configs/pascal_invpt.py --out ckpt/invpt_pascal
  python -m mtdense_jax.convert --from timm --input L_16-i21k.npz \
      --config configs/nyud_invpt.py --out ckpt/vitL_init

The sources are plugins: the configured encoder and decoder modules each
list theirs in ``CONVERTERS = {source: fn}`` (``models/encoders/vit.py``:
"timm", "npz"; ``models/decoders/invpt.py``: "invpt"), so adding a model
with its converter is one file. ``fn(state_dict, *, tasks, build)`` reads the
head sizes it can from the checkpoint, calls ``build(task_outputs or None)``
for the configured model (None: ``--task-outputs`` or the dataset's
metadata), fills it and returns it. The output is the ``params`` item of
``mtdense_jax.train.checkpointing`` at step 0 (model ``nnx.Param`` state
under "params", BatchNorm statistics under "batch_stats"), its meta item
holding the task list, head sizes and dataset metadata ("dataset_meta"):
use it as ``--config.init_checkpoint=OUT`` or evaluate it with ``launch.py
--mode eval --checkpoint OUT``. Checkpoint files are read without executing
code (see ``torch_utils.load_state_dict``).
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
from typing import Any, Callable, Mapping, Sequence

from flax import nnx

from mtdense_jax import config_check
from mtdense_jax import registry
from mtdense_jax import runtime
from mtdense_jax.convert import torch_utils
from mtdense_jax.models import multitask

Converter = Callable[..., nnx.Module]


def converters(model_cfg: Mapping[str, Any]) -> dict[str, Converter]:
  """Sources offered by the configured encoder and decoder plugins."""
  out = {}
  for kind in ("encoder", "decoder"):
    module = registry.lookup(kind, model_cfg[kind])
    out.update(getattr(module, "CONVERTERS", {}) or {})
  return out


def _elsewhere(source: str) -> list[str]:
  """'decoder invpt'-style names of every model plugin offering ``source``
  (for the error message only: imports every model plugin)."""
  found = []
  for kind in ("encoder", "decoder"):
    for name in registry.available(kind):
      try:
        module = registry.lookup(kind, name)
      except Exception:  # pylint: disable=broad-except
        continue   # A broken plugin must not hide the real error.
      if source in (getattr(module, "CONVERTERS", {}) or {}):
        found.append(f"{kind} {name!r}")
  return found


def find_converter(source: str, model_cfg: Mapping[str, Any]) -> Converter:
  offered = converters(model_cfg)
  if source in offered:
    return offered[source]
  where = _elsewhere(source)
  hint = (f" {source!r} is offered by {', '.join(where)}: set "
          "config.model accordingly." if where else "")
  raise ValueError(
      f"--from {source!r}: encoder {model_cfg['encoder']!r} and decoder "
      f"{model_cfg['decoder']!r} offer {sorted(offered) or 'no sources'}."
      + hint)


def _dataset_meta(config) -> dict[str, Any] | None:
  """The configured dataset's metadata, or None when it is unavailable."""
  from mtdense_jax.data import sources  # pylint: disable=g-import-not-at-top
  try:
    return sources.dataset_meta(sources.get_builder(config.data))
  except Exception as e:  # pylint: disable=broad-except
    logging.info("no dataset metadata for %s: %s", config.data.name, e)
    return None


def _task_outputs_from(config, meta: Mapping[str, Any]) -> dict[str, int]:
  from mtdense_jax.train import loop  # pylint: disable=g-import-not-at-top
  return {n: t.num_outputs for n, t in loop.build_tasks(config, meta).items()}


def _needs_num_classes(config, name: str) -> bool:
  """Whether task ``name`` is sized by num_classes (it refuses None)."""
  kw = dict(config.get("task_kw", {}).get(name, {}) or {})
  try:
    registry.lookup("task", name).Task(num_classes=None,
                                       protocol=config.eval.protocol, **kw)
  except ValueError:
    return True
  return False


def checkpoint_meta(config, task_outputs: Mapping[str, int],
                    dataset_meta: Mapping[str, Any] | None) -> dict[str, Any]:
  """What predict/eval need to rebuild the model without guessing: the
  dataset's metadata when known, else tasks and num_classes from the heads."""
  meta = json.loads(json.dumps(dict(dataset_meta or {}), default=str))
  meta.setdefault("tasks", list(task_outputs))
  # The model's heads are the truth for its num_classes.
  heads = {t: int(n) for t, n in task_outputs.items()
           if _needs_num_classes(config, t)}
  known = dict(meta.get("num_classes", {}) or {})
  for t in sorted(set(heads) & set(known)):
    if known[t] != heads[t]:
      logging.warning("dataset %s says num_classes[%s]=%s but the converted "
                      "head has %d; keeping %d", config.data.name, t,
                      known[t], heads[t], heads[t])
  meta["num_classes"] = {**known, **heads}
  return {"dataset_meta": meta,
          "tasks": list(task_outputs),
          "task_outputs": {t: int(n) for t, n in task_outputs.items()},
          "image_size": list(config.data.image_size),
          "model": {"encoder": config.model.encoder,
                    "decoder": config.model.decoder}}


def convert(source: str, input_path: str, config, *,
            task_outputs: Mapping[str, int] | None = None,
            info: dict[str, Any] | None = None) -> nnx.Module:
  """Builds the configured model and loads the converted weights into it.

  ``info``, when given, receives the checkpoint meta (see
  :func:`checkpoint_meta`).
  """
  fn = find_converter(source, config.model)
  sd = torch_utils.strip_prefix(torch_utils.load_state_dict(input_path))
  used = {}

  def build(found: Mapping[str, int] | None) -> nnx.Module:
    meta = None
    outputs = dict(task_outputs or found or {})
    if not outputs:
      meta = _dataset_meta(config)
      if meta is None:
        raise ValueError(
            f"--from {source}: the checkpoint has no head sizes and dataset "
            f"{config.data.name!r} is unavailable; pass --task-outputs "
            "(e.g. semseg=40,depth=1)")
      outputs = _task_outputs_from(config, meta)
    used.update(outputs=outputs, meta=meta)
    return multitask.build_model(
        config.model, task_outputs=outputs,
        img_size=tuple(config.data.image_size), rngs=nnx.Rngs(config.seed))

  model = fn(sd, tasks=tuple(config.tasks), build=build)
  if info is not None:
    meta = used["meta"] if used["meta"] is not None else _dataset_meta(config)
    info.update(checkpoint_meta(config, used["outputs"], meta))
  return model


def save_params(out: str | pathlib.Path, model: nnx.Module,
                meta: Mapping[str, Any] | None = None) -> None:
  """Writes ``model``'s params + BN stats as the checkpoints' params item."""
  # Imported here: the train package pulls in grain, which the conversion
  # itself does not need.
  from mtdense_jax.train import checkpointing  # pylint: disable=g-import-not-at-top
  params = {"params": nnx.state(model, nnx.Param),
            "batch_stats": nnx.state(model, nnx.BatchStat)}
  checkpointing.save_params(pathlib.Path(out).absolute(), params, step=0,
                            meta=dict(meta or {}))


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m mtdense_jax.convert",
      description=__doc__.split("\n\n")[0].strip())
  parser.add_argument("--from", "--source", dest="source", required=True,
                      help="a source of the configured encoder/decoder "
                           "(ViT: timm, npz; InvPT: invpt)")
  parser.add_argument("--input", required=True,
                      help=".pth/.pt/.bin, .safetensors or ViT .npz")
  parser.add_argument("--config", required=True, help="configs/x.py[:arg]")
  parser.add_argument("--out", required=True, help="checkpoint directory")
  parser.add_argument("--task-outputs", default="",
                      help="e.g. semseg=40,depth=1 (default: the "
                           "checkpoint's heads, else the dataset metadata)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  config = config_check.load_config_file(args.config)
  info = {}
  model = convert(args.source, args.input, config,
                  task_outputs=runtime.parse_counts(args.task_outputs) or None,
                  info=info)
  save_params(args.out, model, meta={**info, "converted_from": args.source,
                                     "input": str(args.input),
                                     "config": args.config})
  logging.info("wrote %s", args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
