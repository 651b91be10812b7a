"""Metric output without TensorFlow: stdout, TensorBoard and metrics.jsonl.

clu 0.0.12's metric_writers import TensorFlow (platform.md section 4), so the
TensorBoard event files are written with tensorboardX behind this one small
class; swapping back to clu later touches only this file. Only process 0
writes.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Mapping

from absl import logging
import jax
import numpy as np


class MetricWriter:
  """Scalars to stdout/absl, TensorBoard events and (evals) metrics.jsonl."""

  def __init__(self, workdir: str | pathlib.Path, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.workdir = pathlib.Path(workdir)
    self._tb_writer = None  # Created on first write: a run that fails
                            # before training leaves no event file.

  @property
  def _tb(self):
    if self._tb_writer is None:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self.workdir.mkdir(parents=True, exist_ok=True)
      self._tb_writer = tensorboardX.SummaryWriter(
          str(self.workdir / "tensorboard"))
    return self._tb_writer

  def scalars(self, step: int, values: Mapping[str, float],
              prefix: str = "") -> None:
    if not self.enabled:
      return
    for k, v in values.items():
      self._tb.add_scalar(f"{prefix}{k}", float(v), step)

  def image(self, step: int, name: str, rgb: np.ndarray) -> None:
    if self.enabled:
      self._tb.add_image(name, rgb, step, dataformats="HWC")

  def evaluation(self, step: int, metrics: Mapping[str, float],
                 filename: str = "metrics.jsonl") -> None:
    """One JSON object per (step, file): the step and every metric; a
    re-evaluation of a step replaces its row (the file is rewritten)."""
    self.scalars(step, metrics, prefix="eval/")
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _json_float(v) for k, v in metrics.items()})
    upsert_row(self.workdir / filename, row)
    logging.info("eval step %d: %s", step, _fmt(metrics))
    print(f"[eval] step {step}: {_fmt(metrics)}", flush=True)

  def flush(self) -> None:
    if self._tb_writer is not None:
      self._tb_writer.flush()

  def close(self) -> None:
    if self._tb_writer is not None:
      self._tb_writer.close()


def upsert_row(path: pathlib.Path, row: Mapping[str, object]) -> None:
  """Appends `row` to a JSON-lines file, replacing a row of the same step
  (written to a temporary file and renamed, so a crash loses nothing)."""
  rows = []
  if path.exists():
    for line in path.read_text().splitlines():
      if line.strip():
        old = json.loads(line)
        if old.get("step") != row["step"]:
          rows.append(old)
  rows.append(dict(row))
  rows.sort(key=lambda r: r.get("step", 0))
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
  tmp.replace(path)


class Progress:
  """A progress line with steps/s and ETA."""

  def __init__(self, total_steps: int, start_step: int):
    self.total, self.start = total_steps, start_step
    self._t0, self._s0 = time.perf_counter(), start_step

  def line(self, step: int, values: Mapping[str, float]) -> str:
    now = time.perf_counter()
    rate = (step - self._s0) / max(now - self._t0, 1e-9)
    self._t0, self._s0 = now, step
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    return (f"step {step}/{self.total} | {rate:.2f} steps/s | "
            f"ETA {_hms(eta)} | {_fmt(values)}")


def _json_float(v) -> float | None:
  v = float(v)
  return v if math.isfinite(v) else None


def _fmt(values: Mapping[str, float]) -> str:
  return " ".join(f"{k}={float(v):.4g}" for k, v in values.items())


def _hms(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h:d}:{m:02d}:{s:02d}"
