r"""Training curves from a workdir: losses, weights, learning rate, metrics.

  python -m mtdense_jax.plots --workdir runs/quickstart --out curves.png

Reads what the loop writes (mtdense_jax/train/writers.py): the TensorBoard
event files in ``WORKDIR/tensorboard`` (scalars ``train/loss/<task>``,
``train/weight/<task>``, ``train/lr``, ``train/total``, ...) and
``WORKDIR/metrics.jsonl`` (one ``{"step": s, "<task>/<metric>": v}`` row per
evaluation). Event files are parsed without TensorFlow: a TFRecord is
``uint64 length | uint32 masked-crc32c(length) | data | uint32
masked-crc32c(data)`` and ``data`` is a serialized ``Event`` proto, which
tensorboardX ships. A resumed run replays steps after its last checkpoint;
for a repeated step the value written last (by wall time) wins.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import pathlib
import struct
import sys
from typing import Any, Sequence

from absl import logging
from matplotlib import figure
import numpy as np
from tensorboardX import crc32c
from tensorboardX.proto import event_pb2

Scalars = dict[str, tuple[np.ndarray, np.ndarray]]

_MASK_DELTA = 0xA282EAD8


def _masked_crc(data: bytes) -> int:
  crc = crc32c.crc32c(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def read_records(path: str | pathlib.Path,
                 check_crc: bool = True) -> list[bytes]:
  """The records of one TFRecord file.

  A truncated tail (a writer still running) ends the file quietly; a record
  whose data checksum is wrong is skipped with a warning; a corrupt length
  stops reading, because the framing after it cannot be trusted.
  """
  out = []
  with open(path, "rb") as f:
    while True:
      head = f.read(12)
      if len(head) < 12:
        break
      (length,), (len_crc,) = struct.unpack("<Q", head[:8]), struct.unpack(
          "<I", head[8:])
      if check_crc and _masked_crc(head[:8]) != len_crc:
        logging.warning("%s: corrupt record length; stopping there.", path)
        break
      data = f.read(length)
      tail = f.read(4)
      if len(data) < length or len(tail) < 4:
        break
      if check_crc and _masked_crc(data) != struct.unpack("<I", tail)[0]:
        logging.warning("%s: record with a bad checksum skipped.", path)
        continue
      out.append(data)
  return out


def _scalar_value(value) -> float | None:
  """A float from a Summary.Value (simple_value or a scalar tensor)."""
  if value.HasField("simple_value"):
    return float(value.simple_value)
  if value.HasField("tensor"):
    t = value.tensor
    if t.float_val:
      return float(t.float_val[0])
    if t.double_val:
      return float(t.double_val[0])
    if t.tensor_content and len(t.tensor_content) == 4:
      return float(np.frombuffer(t.tensor_content, np.float32)[0])
  return None


def load_scalars(workdir: str | pathlib.Path,
                 check_crc: bool = True) -> Scalars:
  """Every scalar tag in WORKDIR/tensorboard -> (steps, values), by step.

  Returns {} when there are no event files.
  """
  logdir = pathlib.Path(workdir) / "tensorboard"
  files = sorted(logdir.rglob("events.out.tfevents.*")) if logdir.is_dir() \
      else []
  # tag -> step -> (wall_time, order, value): the latest write wins.
  latest: dict[str, dict[int, tuple[float, int, float]]] = (
      collections.defaultdict(dict))
  order = 0
  for path in files:
    for record in read_records(path, check_crc):
      event = event_pb2.Event.FromString(record)
      if not event.HasField("summary"):
        continue
      for value in event.summary.value:
        v = _scalar_value(value)
        if v is None:
          continue
        order += 1
        key = (event.wall_time, order, v)
        prev = latest[value.tag].get(event.step)
        if prev is None or key[:2] >= prev[:2]:
          latest[value.tag][event.step] = key
  out = {}
  for tag, by_step in latest.items():
    steps = np.asarray(sorted(by_step), np.int64)
    out[tag] = (steps, np.asarray([by_step[s][2] for s in steps], np.float64))
  return out


def load_evals(workdir: str | pathlib.Path,
               filename: str = "metrics.jsonl") -> list[dict[str, Any]]:
  """The rows of WORKDIR/metrics.jsonl in file order (null -> nan)."""
  path = pathlib.Path(workdir) / filename
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    if line.strip():
      row = json.loads(line)
      rows.append({k: (math.nan if v is None else v) for k, v in row.items()})
  return rows


def _eval_series(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, tuple]]:
  """{group: {metric: (steps, values)}}; group = task, or "overall" for
  keys without a "/" (e.g. delta_m). A re-evaluated step keeps its last row."""
  by_step = {}
  for row in rows:
    by_step[int(row["step"])] = row
  series: dict[str, dict[str, list]] = collections.defaultdict(
      lambda: collections.defaultdict(list))
  for step in sorted(by_step):
    for key, v in by_step[step].items():
      if key == "step" or not isinstance(v, (int, float)):
        continue
      group, _, metric = key.rpartition("/")
      series[group or "overall"][metric].append((step, float(v)))
  return {g: {m: tuple(np.asarray(c) for c in zip(*pts))
              for m, pts in ms.items()} for g, ms in series.items()}


def _plot_tags(ax, scalars: Scalars, prefix: str, title: str,
               extra: Sequence[str] = (), log: bool = False) -> bool:
  tags = sorted(t for t in scalars if t.startswith(prefix)) + [
      t for t in extra if t in scalars]
  for tag in tags:
    steps, values = scalars[tag]
    label = tag[len(prefix):] if tag.startswith(prefix) else tag
    label = label or tag.rpartition("/")[2]
    ax.plot(steps, values, label=label.rpartition("train/")[2],
            marker="." if len(steps) < 20 else "")
  ax.set_title(title)
  ax.set_xlabel("step")
  if tags:
    if log and all(np.all(scalars[t][1] > 0) for t in tags):
      ax.set_yscale("log")
    ax.legend(fontsize="small")
  else:
    ax.text(0.5, 0.5, "no data", ha="center", va="center",
            transform=ax.transAxes)
  return bool(tags)


def plot_training(workdir: str | pathlib.Path, out: str | pathlib.Path | None
                  = None, *, dpi: int = 100):
  """One figure: train losses, loss weights, learning rate, then one panel
  of evaluation metrics per task. Saved to `out` when given."""
  scalars = load_scalars(workdir)
  evals = _eval_series(load_evals(workdir))
  ncols = 3
  nrows = 1 + math.ceil(len(evals) / ncols)
  fig = figure.Figure(figsize=(5 * ncols, 3.6 * nrows), dpi=dpi,
                      layout="constrained")
  axes = fig.subplots(nrows, ncols, squeeze=False)
  _plot_tags(axes[0, 0], scalars, "train/loss/", "train loss per task",
             extra=("train/total",), log=True)
  _plot_tags(axes[0, 1], scalars, "train/weight/", "loss weight per task")
  _plot_tags(axes[0, 2], scalars, "train/lr", "learning rate")
  for i, (group, metrics) in enumerate(sorted(evals.items())):
    ax = axes[1 + i // ncols, i % ncols]
    for metric, (steps, values) in sorted(metrics.items()):
      ax.plot(steps, values, marker="o", markersize=3, label=metric)
    ax.set_title(f"eval: {group}")
    ax.set_xlabel("step")
    ax.legend(fontsize="small")
  for j in range(len(evals), (nrows - 1) * ncols):
    axes[1 + j // ncols, j % ncols].set_visible(False)
  fig.suptitle(str(workdir))
  if out is not None:
    pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(out))
  return fig


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m mtdense_jax.plots",
      description="Draws training curves of a workdir to a PNG.")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", default=None,
                      help="image path (default WORKDIR/curves.png)")
  parser.add_argument("--dpi", type=int, default=100)
  args = parser.parse_args(argv)
  workdir = pathlib.Path(args.workdir)
  if not workdir.is_dir():
    parser.error(f"--workdir {workdir}: no such directory")
  out = args.out or workdir / "curves.png"
  plot_training(workdir, out, dpi=args.dpi)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
