r"""Multi-task predictions on any image, from a workdir or a params checkpoint.

  python -m mtdense_jax.predict --workdir runs/quickstart \
      --images a.jpg b.png --out preds/
  python -m mtdense_jax.predict --checkpoint ckpt/invpt_pascal \
      --config configs/pascal_invpt.py --images a.jpg --out preds/

Writes ``OUT/<stem>_<task>.png`` (each task's ``colorize``) and
``OUT/<stem>_panel.png`` per image (``--save-raw`` adds ``<stem>.npz``).
Exit codes: 0 done, 2 a wrong argument (missing image, workdir without
config.json), 1 anything else that stops it (no checkpoint, ...), each
with a one-line message.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from mtdense_jax import runtime


def read_image(path: str | pathlib.Path) -> np.ndarray:
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def write_outputs(predictor, out: pathlib.Path,
                  paths: Sequence[pathlib.Path],
                  images: Sequence[np.ndarray],
                  preds: Sequence[Mapping[str, np.ndarray]],
                  save_raw: bool = False) -> list[pathlib.Path]:
  """<stem>_<task>.png, <stem>_panel.png (and <stem>.npz) per image."""
  out.mkdir(parents=True, exist_ok=True)
  written, seen = [], {}
  for path, image, pred in zip(paths, images, preds):
    stem = path.stem
    seen[stem] = seen.get(stem, 0) + 1
    if seen[stem] > 1:  # a.jpg and a.png, or the same name in two folders
      stem = f"{stem}_{seen[stem]}"
    for task, rgb in predictor.colorize(pred).items():
      written.append(out / f"{stem}_{task}.png")
      Image.fromarray(rgb).save(written[-1])
    written.append(out / f"{stem}_panel.png")
    Image.fromarray(predictor.panel(image, pred)).save(written[-1])
    if save_raw:
      written.append(out / f"{stem}.npz")
      np.savez_compressed(written[-1], **pred)
  return written


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m mtdense_jax.predict",
      description="Predicts every task of a trained model on images.")
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="a training run's workdir")
  src.add_argument("--checkpoint", help="a checkpoints dir (e.g. converted)")
  parser.add_argument("--config", default=None,
                      help="configs/x.py[:arg] or a config.json (default "
                           "WORKDIR/config.json; required with --checkpoint)")
  parser.add_argument("--step", type=int, default=None)
  parser.add_argument("--images", nargs="+", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--batch-size", type=int, default=4)
  parser.add_argument("--no-upscale", action="store_true",
                      help="pad smaller images instead of enlarging them")
  parser.add_argument("--num-classes", default="",
                      help="e.g. semseg=21,human_parts=7 (default: the "
                           "checkpoint's dataset metadata)")
  parser.add_argument("--save-raw", action="store_true",
                      help="also write <stem>.npz with the predicted arrays")
  return parser


def _fail(message: str, code: int = 2):
  """One line on stderr and the exit code (2: a wrong argument)."""
  print(f"Error: {message}", file=sys.stderr)
  raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.checkpoint and not args.config:
    parser.error("--checkpoint needs --config")
  paths = [pathlib.Path(p) for p in args.images]
  missing = [str(p) for p in paths if not p.is_file()]
  if missing:  # Fail on a bad path before loading anything.
    _fail(f"image(s) not found: {', '.join(missing)}")
  if args.workdir and not args.config:
    if not (pathlib.Path(args.workdir) / "config.json").exists():
      _fail(f"{args.workdir}/config.json not found: is it a training "
            "workdir? Otherwise use --checkpoint DIR --config configs/x.py.")
  try:
    num_classes = runtime.parse_counts(args.num_classes) or None
  except ValueError:
    parser.error(f"--num-classes {args.num_classes!r}: expected "
                 "task=N[,task=N]")
  runtime.quiet_logs()
  from mtdense_jax.predict import predictor as pred_lib  # pylint: disable=g-import-not-at-top
  kw = dict(batch_size=args.batch_size, upscale=not args.no_upscale,
            num_classes=num_classes)
  images = [read_image(p) for p in paths]
  try:
    if args.workdir:
      predictor = pred_lib.Predictor.from_workdir(args.workdir, args.step,
                                                  config=args.config, **kw)
    else:
      predictor = pred_lib.Predictor.from_checkpoint(
          args.checkpoint, args.config, step=args.step, **kw)
  except (FileNotFoundError, ValueError) as e:
    print(f"Error: {e}", file=sys.stderr)
    return 1
  preds = predictor.predict(images)
  written = write_outputs(predictor, pathlib.Path(args.out), paths, images,
                          preds, args.save_raw)
  print(f"step {predictor.step}: wrote {len(written)} files to {args.out}")
  return 0
