r"""Converts reference checkpoints into a params-only mtdense_jax checkpoint.

  python -m mtdense_jax.convert --from invpt --input invpt_pascal.pth \
      --config configs/pascal_invpt.py --out ckpt/invpt_pascal
  python -m mtdense_jax.convert --from timm-vit --input L_16-i21k.npz \
      --config configs/nyud_invpt.py --out ckpt/vitL_init

``--from invpt``: a released/trained InvPT ``TransformerNet`` checkpoint
(``.pth`` with ``model`` and a DDP ``module.`` prefix, or ``.safetensors``);
the head sizes are read from the checkpoint. ``--from timm-vit``: a timm ViT
``.pth``/``.safetensors`` or an original ViT ``.npz`` for the ENCODER; its
position embedding is resized to the configured grid (PyTorch bicubic), the
decoder is freshly initialised from ``config.seed``. The output is the
``params`` item of ``mtdense_jax.train.checkpointing`` at step 0 (model
``nnx.Param`` state under "params", BatchNorm statistics under
"batch_stats"): use it as ``--config.init_checkpoint=OUT`` or evaluate it
with ``launch.py --mode eval --checkpoint OUT``. Checkpoint files are read
without executing code (see ``torch_utils.load_state_dict``).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
from typing import Any, Mapping, Sequence

from flax import nnx

from mtdense_jax import config_check
from mtdense_jax.convert import torch_utils
from mtdense_jax.models import multitask
from mtdense_jax.models.decoders import invpt
from mtdense_jax.models.encoders import vit

SOURCES = ("invpt", "timm-vit")


def parse_task_outputs(spec: str) -> dict[str, int]:
  """'semseg=40,depth=1' -> {'semseg': 40, 'depth': 1}."""
  out = {}
  for item in filter(None, spec.split(",")):
    name, _, n = item.partition("=")
    out[name.strip()] = int(n)
  return out


def _invpt_task_outputs(sd: Mapping[str, Any],
                        tasks: Sequence[str]) -> dict[str, int]:
  out = {}
  for t in tasks:
    key = f"heads.{t}.linear_pred.weight"
    if key not in sd:
      raise torch_utils.ConversionError(
          f"config task {t!r} has no head in the checkpoint ({key})")
    out[t] = int(sd[key].shape[0])
  return out


def _dataset_task_outputs(config) -> dict[str, int]:
  from mtdense_jax.data import sources  # pylint: disable=g-import-not-at-top
  from mtdense_jax.train import loop  # pylint: disable=g-import-not-at-top
  meta = sources.dataset_meta(sources.get_builder(config.data))
  return {n: t.num_outputs for n, t in loop.build_tasks(config, meta).items()}


def convert(source: str, input_path: str, config, *,
            task_outputs: Mapping[str, int] | None = None) -> nnx.Module:
  """Builds the configured model and loads the converted weights into it."""
  if source not in SOURCES:
    raise ValueError(f"--from {source!r}; one of {SOURCES}")
  sd = torch_utils.strip_prefix(torch_utils.load_state_dict(input_path))
  if source == "invpt":
    if (config.model.encoder, config.model.decoder) != ("vit", "invpt"):
      raise ValueError("--from invpt needs config.model.encoder='vit' and "
                       "config.model.decoder='invpt'")
    task_outputs = task_outputs or _invpt_task_outputs(sd, config.tasks)
  elif config.model.encoder != "vit":
    raise ValueError("--from timm-vit needs config.model.encoder='vit'")
  task_outputs = dict(task_outputs or _dataset_task_outputs(config))
  model = multitask.build_model(
      config.model, task_outputs=task_outputs,
      img_size=tuple(config.data.image_size), rngs=nnx.Rngs(config.seed))
  if source == "invpt":
    nnx.update(model, invpt.from_torch(sd, model))
  else:
    if vit.is_vit_npz(sd):
      sd = vit.npz_to_torch(sd)
    nnx.update(model.encoder,
               vit.from_torch(sd, model.encoder, resize_pos_embed=True))
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
  parser.add_argument("--from", dest="source", required=True, choices=SOURCES)
  parser.add_argument("--input", required=True,
                      help=".pth/.pt/.bin, .safetensors or ViT .npz")
  parser.add_argument("--config", required=True, help="configs/x.py[:arg]")
  parser.add_argument("--out", required=True, help="checkpoint directory")
  parser.add_argument("--task-outputs", default="",
                      help="e.g. semseg=40,depth=1 (default: checkpoint "
                           "heads for invpt, dataset metadata otherwise)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  config = config_check.load_config_file(args.config)
  model = convert(args.source, args.input, config,
                  task_outputs=parse_task_outputs(args.task_outputs) or None)
  save_params(args.out, model, meta={"converted_from": args.source,
                                     "input": str(args.input),
                                     "config": args.config})
  logging.info("wrote %s", args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
