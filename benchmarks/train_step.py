r"""Train-step speed of InvPT: step time, images/s, peak memory, FLOPs, MFU.

  python benchmarks/train_step.py --backbone S,B,L --size nyud,pascal \
      --batch 2 --dtype bfloat16 --steps 20 --warmup 3 --peak_tflops 989 \
      --out invpt_step.json
  python benchmarks/train_step.py --backbone tiny --hw 64x64 --batch 2 \
      --steps 3                      # CPU smoke run, seconds
  python benchmarks/train_step.py --backbone tiny --hw 64x64 --batch 2 \
      --steps 30 --host_overhead     # Python time per step outside XLA

Measures the framework's own train step (``loop.compile_train_step`` over
``state.init_state``: forward, deep-supervision losses, loss weighting,
backward, optimizer update) on random batches in the input pipeline's format
(image float32, labels per task with 255 = ignore, ``valid``). The model and
optimizer are those of configs/nyud_invpt.py / pascal_invpt.py (paper
recipe; ``tiny`` is their ``runlocal`` model); ``--size nyud`` is 448x576
with the NYUD tasks, ``pascal`` 512x512 with the PASCAL tasks, ``--hw HxW``
any size (multiples of 64) with the NYUD tasks. No dataset is read.

FLOPs come from XLA's cost analysis of the compiled step (per device
program, so per image = flops x devices / global batch); MFU = achieved
FLOP/s per device / ``--peak_tflops`` (H100 bf16 dense: 989). Peak memory is
``memory_stats()['peak_bytes_in_use']`` of device 0 where the backend reports
it (GPU/TPU; "n/a" on CPU), and it includes every earlier configuration of
the same process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from mtdense_jax import config_check
from mtdense_jax.train import loop
from mtdense_jax.train import sharding as shd
from mtdense_jax.train import state as state_lib
from mtdense_jax.train import step as step_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZES = {"nyud": ("nyud_invpt.py", (448, 576)),
         "pascal": ("pascal_invpt.py", (512, 512))}
# Head sizes of the real datasets (the builders' metadata), so that no
# dataset has to be present.
NUM_CLASSES = {"nyud_invpt.py": {"semseg": 40},
               "pascal_invpt.py": {"semseg": 21, "human_parts": 7}}


def make_config(backbone: str, config_file: str, hw: tuple[int, int],
                batch: int, dtype: str):
  """The paper config (or its runlocal model for 'tiny') at `hw`."""
  spec = str(REPO / "configs" / config_file)
  spec += ":runlocal" if backbone == "tiny" else f":backbone={backbone}"
  cfg = config_check.load_config_file(spec)
  cfg.data.image_size = hw
  cfg.train.batch_size = batch
  cfg.model.dtype = dtype
  config_check.validate(cfg)
  return cfg


def make_experiment(cfg) -> loop.Experiment:
  """loop.setup without the dataset: the metadata comes from NUM_CLASSES."""
  meta = {"tasks": list(cfg.tasks),
          "num_classes": NUM_CLASSES[_config_file(cfg)]}
  return loop.build_experiment(cfg, meta, shd.make_mesh(cfg.mesh))


def _config_file(cfg) -> str:
  return "nyud_invpt.py" if cfg.data.name == "nyud_v2" else "pascal_invpt.py"


def random_batch(tasks, batch: int, hw: tuple[int, int],
                 seed: int = 0) -> dict[str, np.ndarray]:
  """A batch in the pipeline's format; ~5% of the label pixels ignored."""
  rng = np.random.default_rng(seed)
  shape = (batch, *hw)
  out = {"image": rng.normal(size=shape + (3,)).astype(np.float32),
         "valid": np.ones((batch,), bool)}
  for name, task in tasks.items():
    c = task.label_channels
    if np.dtype(task.label_dtype) == np.uint8:
      label = rng.integers(0, max(task.num_outputs, 2), shape + (c,))
    elif c == 3:  # unit vectors (normals)
      v = rng.normal(size=shape + (3,))
      label = v / np.linalg.norm(v, axis=-1, keepdims=True)
    else:         # positive values (depth, metres)
      label = rng.uniform(0.5, 10.0, shape + (c,))
    label = label.astype(task.label_dtype)
    label[rng.random(shape) < 0.05] = 255
    out[name] = label
  return out


def _flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def _peak_memory() -> float | None:
  stats = jax.devices()[0].memory_stats()
  return float(stats["peak_bytes_in_use"]) if stats else None


def _dispatch_ms(fn, state, data, acc, steps: int) -> tuple[float, Any]:
  """Median wall time of the call itself (returns before the computation
  ends); the previous step is finished first so nothing queues."""
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics, acc = fn(state, data, acc)
    times.append(time.perf_counter() - start)
    jax.block_until_ready((state, metrics, acc))
  return 1e3 * statistics.median(times), (state, acc)


def host_overhead(state, data, acc, compiled, steps: int) -> dict[str, float]:
  """dispatch_ms of the real step and trivial_ms of an identity step."""
  real_ms, (state, acc) = _dispatch_ms(compiled, state, data, acc, steps)
  ident = jax.jit(lambda s, b, a: (s, {"total": a["total"]}, a),
                  donate_argnums=(0, 2))
  state, _, acc = ident(state, data, acc)
  trivial_ms, _ = _dispatch_ms(ident, state, data, acc, steps)
  leaves, treedef = jax.tree.flatten(state)
  tree = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.tree.unflatten(treedef, jax.tree.flatten(state)[0])
    tree.append(time.perf_counter() - start)
  del leaves
  return {"dispatch_ms": real_ms, "trivial_ms": trivial_ms,
          "tree_ms": 1e3 * statistics.median(tree),
          "state_nodes": jax.tree.structure(state).num_nodes}


def measure(cfg, label: str, steps: int, warmup: int,
            peak_tflops: float | None, profile_dir: str = "",
            overhead: bool = False) -> dict[str, Any]:
  """Compiles the real train step and times `steps` steps after `warmup`."""
  exp = make_experiment(cfg)
  hw, batch = tuple(cfg.data.image_size), cfg.train.batch_size
  defs, state, shardings = state_lib.init_state(
      exp.factory, exp.tx, exp.weighting, list(exp.tasks), exp.mesh,
      trainable=loop.trainable(cfg))
  data = shd.global_batch(random_batch(exp.tasks, batch, hw), exp.mesh)
  acc = jax.device_put(step_lib.zero_acc(exp.tasks), shd.replicated(exp.mesh))
  start = time.perf_counter()
  compiled = loop.compile_train_step(exp, defs, shardings).lower(
      state, data, acc).compile()
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    state, metrics, acc = compiled(state, data, acc)
  jax.block_until_ready(metrics if warmup else state)
  times = []
  # A jax.profiler trace of the timed steps (TensorBoard/Perfetto), on request.
  trace = (jax.profiler.trace(f"{profile_dir}/{label}_{hw[0]}x{hw[1]}")
           if profile_dir else contextlib.nullcontext())
  with trace:
    for i in range(steps):
      start = time.perf_counter()
      with jax.profiler.StepTraceAnnotation("train", step_num=i):
        state, metrics, acc = compiled(state, data, acc)
        jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  flops = _flops(compiled)
  n_dev = exp.mesh.devices.size
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  row = {"backbone": label,
         "hw": f"{hw[0]}x{hw[1]}", "tasks": ",".join(cfg.tasks),
         "batch": batch, "dtype": cfg.model.dtype, "devices": n_dev,
         "params_M": n_params / 1e6, "compile_s": compile_s,
         "step_ms": 1e3 * step_s, "step_ms_min": 1e3 * min(times),
         "images_per_s": batch / step_s,
         "loss": float(metrics["total"]),
         "gflop_per_image": flops * n_dev / batch / 1e9 if flops else None,
         "tflops_per_device": flops / step_s / 1e12 if flops else None,
         "mfu": (flops / step_s / (peak_tflops * 1e12)
                 if flops and peak_tflops else None),
         "peak_mem_gib": (_peak_memory() or 0) / 2**30 or None,
         "backend": jax.default_backend()}
  if overhead:
    row.update(host_overhead(state, data, acc, compiled, steps))
  return row


COLUMNS = (("backbone", "{}"), ("hw", "{}"), ("batch", "{}"), ("dtype", "{}"),
           ("params_M", "{:.1f}"), ("compile_s", "{:.1f}"),
           ("step_ms", "{:.1f}"), ("images_per_s", "{:.2f}"),
           ("gflop_per_image", "{:.2f}"), ("tflops_per_device", "{:.3f}"),
           ("mfu", "{:.1%}"), ("peak_mem_gib", "{:.2f}"))


def table(rows: list[dict[str, Any]]) -> str:
  cells = [[k for k, _ in COLUMNS]] + [
      [("n/a" if r[k] is None else fmt.format(r[k])) for k, fmt in COLUMNS]
      for r in rows]
  widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
  lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths))
           for row in cells]
  return "\n".join([lines[0], "-" * len(lines[0])] + lines[1:])


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--backbone", default="S",
                 help="comma list of S, B, L, tiny")
  p.add_argument("--size", default="nyud", help="comma list of nyud, pascal")
  p.add_argument("--hw", default="", help="HxW (overrides --size), e.g. "
                 "128x128; NYUD tasks")
  p.add_argument("--batch", type=int, default=2, help="global batch")
  p.add_argument("--dtype", default="float32",
                 choices=("float32", "bfloat16"))
  p.add_argument("--steps", type=int, default=10, help="timed steps")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps")
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="device peak TFLOP/s for MFU (H100 bf16: 989)")
  p.add_argument("--out", default="", help="write the rows as JSON here")
  p.add_argument("--host_overhead", action="store_true",
                 help="also time the dispatch (Python outside XLA) of the "
                 "step and of a trivial step over the same state")
  p.add_argument("--profile", default="",
                 help="write a jax.profiler trace of the timed steps here")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.hw:
    h, w = (int(x) for x in args.hw.lower().split("x"))
    shapes = [("nyud_invpt.py", (h, w))]
  else:
    shapes = [SIZES[s.strip()] for s in args.size.split(",")]
  rows = []
  for backbone in (b.strip() for b in args.backbone.split(",")):
    for config_file, hw in shapes:
      cfg = make_config(backbone, config_file, hw, args.batch, args.dtype)
      rows.append(measure(cfg, backbone, args.steps, args.warmup,
                          args.peak_tflops, args.profile,
                          args.host_overhead))
      print(table(rows[-1:]).splitlines()[-1] if len(rows) > 1 else
            table(rows), flush=True)
  print(f"\n{jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"{jax.device_count()} device(s); median of {args.steps} steps "
        f"after {args.warmup} warm-up; FLOPs per image = XLA cost analysis "
        "of the whole train step (fwd + bwd + update).\n")
  print(table(rows))
  if args.host_overhead:
    for r in rows:
      print(f"{r['backbone']} {r['hw']}: host dispatch {r['dispatch_ms']:.2f} "
            f"ms/step (step {r['step_ms']:.1f} ms); trivial step over the "
            f"same state {r['trivial_ms']:.2f} ms; state flatten+unflatten "
            f"{r['tree_ms']:.2f} ms; "
            f"{r['state_nodes']} pytree nodes in the state")
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(rows, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
