r"""Evaluation throughput (images/s): the jitted eval step alone, and a full
pass over the split (input pipeline + step + metric finalisation) as the
training loop runs it (loop.evaluate). Randomly initialised weights (speed
does not depend on them). Prints a table and writes JSON.

  # CPU smoke (8 simulated devices, tiny model):
  python benchmarks/eval_throughput.py --cpu_devices 8 --batch_sizes 8,16
  # One GPU, InvPT at NYUD size on the synthetic scenes rendered at 448x576:
  python benchmarks/eval_throughput.py --config configs/synthetic_invpt.py \
      --set data.image_size=(448,576) \
      --set "data.builder_kwargs={'height':448,'width':576,'num_train':8,'num_validation':64}" \
      --set model.dtype=bfloat16 --batch_sizes 8,16,32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import scaling  # pylint: disable=g-import-not-at-top,wrong-import-position


def _parse() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config",
                 default=os.path.join(REPO, "configs",
                                      "synthetic_baseline.py:runlocal"))
  p.add_argument("--batch_sizes", default="8,16")
  p.add_argument("--strategy", default="replicate")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--cpu_devices", type=int, default=0)
  p.add_argument("--data_dir", default=None)
  p.add_argument("--set", action="append", default=[])
  p.add_argument("--json", default="eval_throughput.json")
  return p.parse_args()


def measure(cfg, steps: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from mtdense_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from mtdense_jax.train import loop  # pylint: disable=g-import-not-at-top
  from mtdense_jax.train import sharding as shd  # pylint: disable=g-import-not-at-top
  from mtdense_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top

  exp = loop.setup(cfg)
  defs, state, shardings = state_lib.init_state(
      exp.factory, exp.tx, exp.weighting, list(exp.tasks), exp.mesh,
      cfg.sharding)
  eval_fn = loop.compile_eval_step(exp, defs, shardings)
  data = pipeline.make_eval_iter(cfg.data, list(exp.tasks),
                                 split=cfg.data.eval_split,
                                 global_batch_size=cfg.eval.batch_size)
  batch = shd.global_batch(next(iter(data)), exp.mesh)
  stats = jax.device_put({n: t.metric_init() for n, t in exp.tasks.items()},
                         shd.replicated(exp.mesh))
  p, s = state["params"], state["batch_stats"]
  t0 = time.perf_counter()
  stats = jax.block_until_ready(eval_fn(p, s, stats, batch))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    stats = eval_fn(p, s, stats, batch)
  jax.block_until_ready(stats)
  step_s = (time.perf_counter() - t0) / steps
  t0 = time.perf_counter()
  loop.evaluate(exp, eval_fn, p, s)
  split_s = time.perf_counter() - t0
  n = data.num_examples    # real images (the padded tail not counted)
  return dict(step_images_per_s=cfg.eval.batch_size / step_s,
              step_ms=1e3 * step_s, split_images=n,
              split_images_per_s=n / split_s, compile_s=compile_s,
              devices=jax.device_count())


def main() -> None:
  args = _parse()
  if args.cpu_devices:
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
  import jax  # pylint: disable=g-import-not-at-top,reimported
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()
  from mtdense_jax import config_check  # pylint: disable=g-import-not-at-top
  rows = []
  print(f"{'batch':>5} {'step img/s':>10} {'ms/step':>8} {'split img/s':>11} "
        f"{'images':>6} {'compile s':>9}")
  for bs in [int(b) for b in args.batch_sizes.split(",")]:
    cfg = config_check.load_config_file(args.config)
    for item in args.set:
      scaling._override(cfg, item)  # pylint: disable=protected-access
    if args.data_dir:
      cfg.data.data_dir = args.data_dir
    cfg.eval.batch_size = bs
    cfg.sharding.strategy = args.strategy
    row = dict(batch=bs, **measure(cfg, args.steps))
    rows.append(row)
    print(f"{bs:>5} {row['step_images_per_s']:10.1f} {row['step_ms']:8.1f} "
          f"{row['split_images_per_s']:11.1f} {row['split_images']:>6} "
          f"{row['compile_s']:9.1f}", flush=True)
  with open(args.json, "w") as f:
    json.dump(dict(device=str(jax.devices()[0].device_kind), config=args.config,
                   overrides=args.set, rows=rows), f, indent=2)
  print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
