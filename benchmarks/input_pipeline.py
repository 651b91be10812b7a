r"""Input-pipeline throughput (images/s) with training augmentation.

Renders the synthetic scenes at a target resolution (builder_kwargs height/
width, a few training images; cached in --data_dir) and times the real train
stream of mtdense_jax/data/pipeline.py (decode, random scale, crop, flip,
photometric distortion, normalise, pad, batch) for several grain worker
counts. Presets: NYUD (480x640 scenes, 448x576 crops, semseg/depth/normals/
edge) and PASCAL (512x512 scenes and crops, semseg/human_parts/sal/normals/
edge). Prints a table and writes JSON.

  python benchmarks/input_pipeline.py --presets nyud,pascal --workers 0,2,4 \
      --batches 20 --data_dir /tmp/bench_tfds
  # CPU smoke (small images, few batches):
  python benchmarks/input_pipeline.py --presets nyud --scale 0.25 \
      --workers 0,1 --batches 4 --num_train 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PRESETS = {
    "nyud": dict(config="nyud_like", scene=(480, 640), crop=(448, 576),
                 tasks=("semseg", "depth", "normals", "edge")),
    "pascal": dict(config="pascal_like", scene=(512, 512), crop=(512, 512),
                   tasks=("semseg", "human_parts", "sal", "normals", "edge")),
}


def _parse() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--presets", default="nyud,pascal")
  p.add_argument("--workers", default="0,2")
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--batches", type=int, default=10, help="timed batches")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--num_train", type=int, default=16)
  p.add_argument("--scale", type=float, default=1.0,
                 help="multiply every size (0.25 for a quick CPU check)")
  p.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(),
                                                    "mtdense_bench_tfds"))
  p.add_argument("--json", default="input_pipeline.json")
  return p.parse_args()


def _size(hw, scale: float) -> tuple[int, int]:
  return tuple(max(16, int(round(d * scale / 16)) * 16) for d in hw)


def data_config(preset: dict, args) -> "object":
  from mtdense_jax import config_defaults  # pylint: disable=g-import-not-at-top
  import ml_collections as mlc  # pylint: disable=g-import-not-at-top
  c = config_defaults.base_config().data
  scene = _size(preset["scene"], args.scale)
  c.name, c.config = "synthetic_scenes", preset["config"]
  c.data_dir = args.data_dir
  c.builder_kwargs = mlc.ConfigDict(dict(
      height=scene[0], width=scene[1], num_train=args.num_train,
      num_validation=2))
  c.image_size = _size(preset["crop"], args.scale)
  return c


def measure(data_cfg, tasks, workers: int, args) -> dict:
  from mtdense_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  it = pipeline.make_train_iter(data_cfg, list(tasks),
                                global_batch_size=args.batch_size, seed=0,
                                worker_count=workers)
  t0 = time.perf_counter()
  for _ in range(args.warmup):
    next(it)
  first_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(args.batches):
    batch = next(it)
  dt = time.perf_counter() - t0
  return dict(images_per_s=args.batches * args.batch_size / dt,
              ms_per_batch=1e3 * dt / args.batches, startup_s=first_s,
              image_shape=list(batch["image"].shape))


def main() -> None:
  args = _parse()
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()   # grain's worker processes read absl flags.
  from mtdense_jax.data import sources  # pylint: disable=g-import-not-at-top
  rows = []
  print(f"{'preset':>7} {'crop':>9} {'workers':>7} {'img/s':>8} "
        f"{'ms/batch':>9} {'startup s':>9}")
  for name in args.presets.split(","):
    preset = PRESETS[name]
    data_cfg = data_config(preset, args)
    t0 = time.perf_counter()
    sources.prepare(sources.get_builder(data_cfg))
    render_s = time.perf_counter() - t0
    for workers in [int(w) for w in args.workers.split(",")]:
      row = dict(preset=name, crop=list(data_cfg.image_size),
                 workers=workers, batch_size=args.batch_size,
                 prepare_s=render_s)
      row.update(measure(data_cfg, preset["tasks"], workers, args))
      rows.append(row)
      crop = "x".join(map(str, row["crop"]))
      print(f"{name:>7} {crop:>9} {workers:>7} {row['images_per_s']:8.1f} "
            f"{row['ms_per_batch']:9.1f} {row['startup_s']:9.1f}",
            flush=True)
  with open(args.json, "w") as f:
    json.dump(dict(cpu_count=os.cpu_count(), rows=rows), f, indent=2)
  print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
