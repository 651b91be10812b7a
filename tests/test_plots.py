"""Training curves: event files read back without TensorFlow, the eval rows,
and the figure written as a PNG."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np  # pylint: disable=g-import-not-at-top
from PIL import Image  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top
import tensorboardX  # pylint: disable=g-import-not-at-top

from mtdense_jax import plots  # pylint: disable=g-import-not-at-top

TASKS = ("semseg", "depth")


def _write_run(workdir, steps, offset=0.0, suffix=""):
  # The file name has the time in seconds: a suffix keeps two runs apart.
  writer = tensorboardX.SummaryWriter(str(workdir / "tensorboard"),
                                      filename_suffix=suffix)
  for s in steps:
    for i, t in enumerate(TASKS):
      writer.add_scalar(f"train/loss/{t}", 1.0 / s + i + offset, s)
      writer.add_scalar(f"train/weight/{t}", 0.5 + 0.1 * i, s)
    writer.add_scalar("train/lr", 1e-3 * (1 - s / 10), s)
  writer.close()


@pytest.fixture
def workdir(tmp_path):
  _write_run(tmp_path, [1, 2, 3, 4])
  rows = [{"step": 2, "semseg/mIoU": 0.1, "depth/rmse": 2.0, "delta_m": None},
          {"step": 4, "semseg/mIoU": 0.3, "depth/rmse": 1.5, "delta_m": -3.0}]
  (tmp_path / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  return tmp_path


def test_load_scalars_matches_what_was_written(workdir):
  scalars = plots.load_scalars(workdir)
  assert {"train/loss/semseg", "train/loss/depth", "train/weight/semseg",
          "train/lr"} <= set(scalars)
  steps, values = scalars["train/loss/depth"]
  np.testing.assert_array_equal(steps, [1, 2, 3, 4])
  # simple_value is float32 on disk: tolerance 1e-6 relative.
  np.testing.assert_allclose(values, [1.0 / s + 1 for s in steps], rtol=1e-6)
  np.testing.assert_allclose(scalars["train/lr"][1],
                             [1e-3 * (1 - s / 10) for s in steps], rtol=1e-6)


def test_resumed_run_last_write_wins(workdir):
  # A resumed run (new event file) replays steps 3 and 4, then goes on.
  _write_run(workdir, [3, 4, 5], offset=10.0, suffix=".resumed")
  steps, values = plots.load_scalars(workdir)["train/loss/semseg"]
  np.testing.assert_array_equal(steps, [1, 2, 3, 4, 5])
  want = [1.0, 0.5, 1 / 3 + 10, 0.25 + 10, 0.2 + 10]
  np.testing.assert_allclose(values, want, rtol=1e-6)


def test_corrupt_and_truncated_records(workdir):
  path = next((workdir / "tensorboard").glob("events.out.tfevents.*"))
  data = bytearray(path.read_bytes())
  records = plots.read_records(path)
  # Flip the last payload byte of the last record (before its 4-byte crc):
  # that record is skipped.
  data[len(data) - 4 - 1] ^= 0xFF
  path.write_bytes(bytes(data) + b"\x07\x00")  # and a truncated tail
  got = plots.read_records(path)
  assert len(got) == len(records) - 1
  assert got == records[:-1]
  assert len(plots.read_records(path, check_crc=False)) == len(records)


def test_load_evals(workdir):
  rows = plots.load_evals(workdir)
  assert [r["step"] for r in rows] == [2, 4]
  assert rows[1]["semseg/mIoU"] == 0.3
  assert np.isnan(rows[0]["delta_m"])
  assert plots.load_evals(workdir / "nowhere") == []


def test_plot_training_writes_png(workdir):
  out = workdir / "curves.png"
  fig = plots.plot_training(workdir, out)
  titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
  assert {"train loss per task", "loss weight per task", "learning rate",
          "eval: semseg", "eval: depth", "eval: overall"} <= set(titles)
  loss_ax = fig.axes[0]
  assert sorted(l.get_label() for l in loss_ax.get_lines()) == sorted(TASKS)
  with Image.open(out) as im:
    assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 300


def test_cli(workdir, tmp_path):
  out = tmp_path / "sub" / "c.png"
  assert plots.main(["--workdir", str(workdir), "--out", str(out)]) == 0
  assert out.exists()


def test_empty_workdir_still_plots(tmp_path):
  assert plots.load_scalars(tmp_path) == {}
  fig = plots.plot_training(tmp_path, tmp_path / "c.png")
  assert (tmp_path / "c.png").exists() and fig.axes
