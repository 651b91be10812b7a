r"""Train-step throughput and MFU over batch sizes, sharding modes and remat.

Sweeps the framework's own pieces (loop.setup, state.init_state,
loop.compile_train_step) on every device of this host, one jitted step per
point, on a fixed batch from the real input pipeline (so only the step is
timed; benchmarks/input_pipeline.py times the data). FLOPs per step come from
XLA's cost analysis of the compiled (per-device, SPMD-partitioned) step, so
they include remat's recomputation and any FSDP overhead; MFU = per-device
FLOP/s / per-device peak. With grad_accum > 1 XLA counts the scanned
micro-batch body once, so FLOP/s and MFU are then k times too low.
Prints a table and writes JSON.

  # CPU smoke (8 simulated devices, tiny model; seconds per point):
  python benchmarks/scaling.py --cpu_devices 8 --batch_sizes 8,16 \
      --strategies replicate,fsdp --remat none,block --min_size 1024
  # One H100 (bf16 peak 989 TFLOP/s), ViT-S/16 baseline at 96x128:
  python benchmarks/scaling.py --config configs/synthetic_baseline.py \
      --batch_sizes 16,32,64,128 --strategies replicate,fsdp \
      --remat none,block --set model.dtype=bfloat16 --peak_tflops 989
  # InvPT ViT-L at NYUD size on 8 GPUs (one host):
  python benchmarks/scaling.py --config configs/nyud_invpt.py \
      --batch_sizes 8,16,32 --strategies replicate,fsdp --remat none,block \
      --set model.dtype=bfloat16 --peak_tflops 989
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _parse() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config",
                 default=os.path.join(REPO, "configs",
                                      "synthetic_baseline.py:runlocal"))
  p.add_argument("--batch_sizes", default="8,16")
  p.add_argument("--strategies", default="replicate,fsdp")
  p.add_argument("--remat", default="none,block")
  p.add_argument("--grad_accum", default="1")
  p.add_argument("--mesh_model", type=int, default=1)
  p.add_argument("--min_size", type=int, default=2 ** 14)
  p.add_argument("--steps", type=int, default=5, help="timed steps")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--peak_tflops", type=float, default=0.0,
                 help="per-device peak (H100 bf16 dense: 989); 0: no MFU")
  p.add_argument("--cpu_devices", type=int, default=0)
  p.add_argument("--data_dir", default=None)
  p.add_argument("--set", action="append", default=[],
                 help="config override key.sub=value (python literal)")
  p.add_argument("--json", default="scaling.json")
  return p.parse_args()


def measure(cfg, *, steps: int, warmup: int) -> dict:
  """Compiles and times one train step configuration."""
  import jax  # pylint: disable=g-import-not-at-top
  from mtdense_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from mtdense_jax.train import loop  # pylint: disable=g-import-not-at-top
  from mtdense_jax.train import sharding as shd  # pylint: disable=g-import-not-at-top
  from mtdense_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from mtdense_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  exp = loop.setup(cfg)
  defs, state, shardings = state_lib.init_state(
      exp.factory, exp.tx, exp.weighting, list(exp.tasks), exp.mesh,
      cfg.sharding, loop.trainable(cfg))
  it = pipeline.make_train_iter(cfg.data, list(exp.tasks),
                                global_batch_size=cfg.train.batch_size,
                                seed=cfg.seed)
  batch = shd.global_batch(next(it), exp.mesh)
  acc = jax.device_put(step_lib.zero_acc(exp.tasks), shd.replicated(exp.mesh))
  t0 = time.perf_counter()
  compiled = loop.compile_train_step(exp, defs, shardings).lower(
      state, batch, acc).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", 0.0))
  mem = compiled.memory_analysis()
  temp = int(getattr(mem, "temp_size_in_bytes", 0) or 0)
  for _ in range(warmup):
    state, metrics, acc = compiled(state, batch, acc)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics, acc = compiled(state, batch, acc)
  jax.block_until_ready((state, metrics))
  dt = (time.perf_counter() - t0) / steps
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  # Parameter elements one device holds (fsdp: ~params / data devices).
  per_device = sum(x.addressable_shards[0].data.size
                   for x in jax.tree.leaves(state["params"]))
  return dict(step_s=dt, images_per_s=cfg.train.batch_size / dt,
              compile_s=compile_s, flops_per_device_step=flops,
              tflops_per_s_per_device=flops / dt / 1e12, temp_bytes=temp,
              params=int(n_params), params_per_device=int(per_device),
              devices=jax.device_count(),
              loss=float(jax.device_get(metrics["total"])))


def main() -> None:
  args = _parse()
  if args.cpu_devices:
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
  import jax  # pylint: disable=g-import-not-at-top,reimported
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()   # grain reads absl flags.
  from mtdense_jax import config_check  # pylint: disable=g-import-not-at-top
  from mtdense_jax import config_defaults  # pylint: disable=g-import-not-at-top

  rows = []
  for bs in [int(b) for b in args.batch_sizes.split(",")]:
    for strategy in args.strategies.split(","):
      for remat in args.remat.split(","):
        for k in [int(g) for g in args.grad_accum.split(",")]:
          cfg = config_check.load_config_file(args.config)
          for item in args.set:
            config_defaults.apply_override(cfg, item)
          if args.data_dir:
            cfg.data.data_dir = args.data_dir
          cfg.train.batch_size = bs
          cfg.train.grad_accum = k
          cfg.sharding.strategy = strategy
          cfg.sharding.min_size = args.min_size
          cfg.mesh.model = args.mesh_model
          cfg.model.remat = remat
          row = dict(batch=bs, strategy=strategy, remat=remat, grad_accum=k)
          try:
            row.update(measure(cfg, steps=args.steps, warmup=args.warmup))
          except Exception as e:  # pylint: disable=broad-except
            row["error"] = f"{type(e).__name__}: {e}"[:300]
          if args.peak_tflops and "tflops_per_s_per_device" in row:
            row["mfu"] = row["tflops_per_s_per_device"] / args.peak_tflops
          rows.append(row)
          print(_fmt(row), flush=True)
  out = dict(device=str(jax.devices()[0].device_kind),
             platform=jax.devices()[0].platform, config=args.config,
             overrides=args.set, peak_tflops=args.peak_tflops, rows=rows)
  with open(args.json, "w") as f:
    json.dump(out, f, indent=2)
  print(f"wrote {args.json}")


_HEADER = (f"{'batch':>5} {'strategy':>9} {'remat':>5} {'k':>2} "
           f"{'ms/step':>9} {'img/s':>8} {'GFLOP/s/d':>9} {'MFU':>6} "
           f"{'temp MB':>8} {'dev/params':>11} {'compile s':>9}")


def _fmt(row: dict) -> str:
  if not hasattr(_fmt, "shown"):
    print(_HEADER)
    _fmt.shown = True
  head = (f"{row['batch']:>5} {row['strategy']:>9} {row['remat']:>5} "
          f"{row['grad_accum']:>2} ")
  if "error" in row:
    return head + "ERROR " + row["error"]
  mfu = f"{100 * row['mfu']:5.1f}%" if "mfu" in row else "     -"
  ratio = row["params_per_device"] / max(row["params"], 1)
  return head + (f"{1e3 * row['step_s']:9.1f} {row['images_per_s']:8.1f} "
                 f"{1e3 * row['tflops_per_s_per_device']:9.2f} {mfu:>6} "
                 f"{row['temp_bytes'] / 2 ** 20:8.1f} {ratio:11.4f} "
                 f"{row['compile_s']:9.1f}")


if __name__ == "__main__":
  main()
