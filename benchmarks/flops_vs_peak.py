r"""FLOPs of the InvPT perf steps against this machine's measured matmul peak.

  python benchmarks/flops_vs_peak.py                        # tiny and small
  python benchmarks/flops_vs_peak.py --configs tiny --steps 10 --no-ref

Why a step-time target can or cannot be met on a given CPU: a step cannot
run faster than its matmul/convolution FLOPs at the machine's matmul peak.
For each ../shared/perf/configs.json configuration this prints

  * FLOPs of our compiled train step and eval forward: XLA's cost analysis
    of the whole program, and the dot_general + convolution FLOPs counted on
    its jaxpr (2 x multiply-adds; scan bodies times their length);
  * the reference PyTorch step's FLOPs (torch.utils.flop_counter on one
    train step of ../shared/perf/ref_step.py's model), and its step time,
    run in the reference venv (~/.cache/invpt-ref/venv, --no-ref skips);
  * the matmul peak: a 2048^3 float32 jnp.dot and torch.matmul on the
    threads both sides use (2), in GFLOP/s of wall time and per CPU-second;
  * each step's wall and process-CPU median, the fraction of peak it
    reaches, the lower bound (matmul FLOPs / peak) and the best ratio
    reference / ours that bound allows.

On a shared machine wall times swing with the load; CPU time (all threads
of the process) is steadier for XLA, and "per CPU-s" figures compare across
loads: GFLOP per CPU-second x cores = the quiet-machine figure. torch's
OpenMP threads spin while a sibling thread is descheduled, so on an
oversubscribed machine the reference's CPU time inflates too: its columns
mean something on a quiet machine only. The per-op overhead (CPU-us per
tiny XLA kernel) times the step's XLA op count is the other floor: a step
of thousands of small kernels is dispatch-bound, not FLOP-bound.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top
from jax.extend import core as jex_core  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from benchmarks import train_step as ts  # pylint: disable=g-import-not-at-top
from mtdense_jax import runtime  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parents[1]
PERF = REPO.parent / "shared" / "perf"
REF_VENV = pathlib.Path.home() / ".cache" / "invpt-ref" / "venv"
REF_ROOT = pathlib.Path.home() / ".cache" / "invpt-ref" / "src" / "InvPT"


# --- FLOPs counted on a jaxpr ------------------------------------------------


def _dot_flops(eqn) -> float:
  (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  contract = np.prod([lhs[i] for i in lc], dtype=np.float64)
  batch = np.prod([lhs[i] for i in lb], dtype=np.float64)
  lfree = np.prod([d for i, d in enumerate(lhs) if i not in (*lc, *lb)],
                  dtype=np.float64)
  rfree = np.prod([d for i, d in enumerate(rhs)
                   if i not in (*rc, *eqn.params["dimension_numbers"][1][1])],
                  dtype=np.float64)
  return 2.0 * batch * lfree * rfree * contract


def _conv_flops(eqn) -> float:
  """2 x output elements x (kernel elements per output feature). Transposed
  convolutions of the backward pass (lhs dilation) count their inserted
  zeros too: an upper bound for those."""
  out = eqn.outvars[0].aval.shape
  kernel = eqn.invars[1].aval.shape
  spec = eqn.params["dimension_numbers"].rhs_spec   # (out, in, *spatial)
  # The kernel's in dimension is already in_features / feature_group_count.
  per_out = np.prod(kernel, dtype=np.float64) / kernel[spec[0]]
  return 2.0 * np.prod(out, dtype=np.float64) * per_out


def _sub_jaxprs(eqn):
  for v in eqn.params.values():
    for x in (v if isinstance(v, (tuple, list)) else (v,)):
      if isinstance(x, jex_core.ClosedJaxpr):
        yield x.jaxpr
      elif isinstance(x, jex_core.Jaxpr):
        yield x


def matmul_flops(jaxpr) -> dict[str, float]:
  """{"dot": FLOPs of dot_general, "conv": of conv_general_dilated}."""
  out = {"dot": 0.0, "conv": 0.0}
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      out["dot"] += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      out["conv"] += _conv_flops(eqn)
    times = float(eqn.params.get("length", 1)) if name == "scan" else 1.0
    for sub in _sub_jaxprs(eqn):
      for k, v in matmul_flops(sub).items():
        out[k] += times * v
  return out


# --- measurements ------------------------------------------------------------


def _timed(fn, steps: int) -> tuple[float, float]:
  """(median wall ms, median process-CPU ms) of `steps` calls."""
  wall, cpu = [], []
  for _ in range(steps):
    w, c = time.perf_counter(), time.process_time()
    fn()
    cpu.append(time.process_time() - c)
    wall.append(time.perf_counter() - w)
  return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


def jax_peak(n: int, reps: int) -> dict[str, float]:
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
  dot = jax.jit(lambda x, y: jnp.dot(x, y, precision="highest"))
  jax.block_until_ready(dot(a, a))
  wall, cpu = _timed(lambda: jax.block_until_ready(dot(a, a)), reps)
  flop = 2.0 * n ** 3
  return {"wall_gflops": flop / wall / 1e6, "cpu_gflops": flop / cpu / 1e6}


def op_overhead(n_ops: int = 400, reps: int = 20) -> float:
  """Process-CPU microseconds per XLA kernel of a program of `n_ops`
  independent tiny fusions (64 elements each): the per-op floor that a
  step of thousands of small ops pays whatever its FLOPs."""
  xs = [jnp.full((64,), float(i)) for i in range(n_ops)]
  fn = jax.jit(lambda xs: [x * 2.0 + 1.0 for x in xs])
  jax.block_until_ready(fn(xs))
  _, cpu = _timed(lambda: jax.block_until_ready(fn(xs)), reps)
  return 1e3 * cpu / n_ops


def ours(name: str, mode: str, steps: int, warmup: int,
         flatten: str = "auto") -> dict[str, Any]:
  ref = ts.load_ref_config(f"{PERF / 'configs.json'}:{name}")
  cfg, meta = ts.ref_experiment(ref)
  cfg.optim.flatten = flatten
  built = ts.build(cfg, meta, mode, 1)
  for _ in range(warmup):
    built["call"]()
  wall, cpu = _timed(built["call"], steps)
  counted = matmul_flops(built["traced"].jaxpr.jaxpr)
  return {"xla_flops": ts._flops(built["compiled"]),  # pylint: disable=protected-access
          "dot_flops": counted["dot"], "conv_flops": counted["conv"],
          "wall_ms": wall, "cpu_ms": cpu, **ts.hlo_ops(built["compiled"])}


REF_SCRIPT = r"""
import contextlib, json, os, statistics, sys, time
import torch
from torch.utils.flop_counter import FlopCounterMode
sys.path.insert(0, os.environ["PERF"])
import ref_step as S
import invpt_build as R
torch.set_num_threads(int(os.environ["THREADS"]))
out = {}
n = int(os.environ["PEAK_N"])
a = torch.randn(n, n)
torch.matmul(a, a)
w, c = [], []
for _ in range(int(os.environ["PEAK_REPS"])):
  t, p = time.perf_counter(), time.process_time()
  torch.matmul(a, a)
  c.append(time.process_time() - p); w.append(time.perf_counter() - t)
out["peak"] = {"wall_gflops": 2 * n**3 / statistics.median(w) / 1e9,
               "cpu_gflops": 2 * n**3 / statistics.median(c) / 1e9}
root = os.environ["REF_ROOT"]
with contextlib.redirect_stdout(sys.stderr):
  R.setup_reference(root)
for name in os.environ["CONFIGS"].split(","):
  cfg = S.CONFIGS[name]
  with contextlib.redirect_stdout(sys.stderr):
    p, model, criterion, optimizer, scheduler = S.build(root, cfg, 0)
  batch = S.make_batch(p, cfg, 1)
  model.train()
  def step():
    output = model(batch["image"])
    loss = criterion(output, batch, tasks=p.TASKS.NAMES)
    optimizer.zero_grad()
    loss["total"].backward()
    optimizer.step()
    scheduler.step()
  def forward():
    with torch.no_grad():
      model(batch["image"])
  row = {}
  for mode, fn in (("train", step), ("forward", forward)):
    if mode == "forward":
      model.eval()
    for _ in range(int(os.environ["WARMUP"])):
      fn()
    w, c = [], []
    for _ in range(int(os.environ["STEPS"])):
      t, q = time.perf_counter(), time.process_time()
      fn()
      c.append(time.process_time() - q); w.append(time.perf_counter() - t)
    # Counted after the timing: the counter's hooks must not slow it.
    with FlopCounterMode(display=False) as counter:
      fn()
    row[mode] = {"flops": float(counter.get_total_flops()),
                 "wall_ms": 1e3 * statistics.median(w),
                 "cpu_ms": 1e3 * statistics.median(c)}
  out[name] = row
print(json.dumps(out))
"""


def reference(configs: list[str], steps: int, warmup: int, n: int,
              reps: int, threads: int) -> dict[str, Any] | None:
  """Peak, FLOPs and step times of the reference (its venv, a subprocess)."""
  python = REF_VENV / "bin" / "python"
  if not python.exists() or not REF_ROOT.is_dir():
    print(f"no reference venv at {REF_VENV} (../shared/perf/setup_ref.sh); "
          "reference columns skipped", file=sys.stderr)
    return None
  env = dict(os.environ, PERF=str(PERF), REF_ROOT=str(REF_ROOT),
             CONFIGS=",".join(configs), STEPS=str(steps),
             WARMUP=str(warmup), PEAK_N=str(n), PEAK_REPS=str(reps),
             THREADS=str(threads), OMP_NUM_THREADS=str(threads))
  res = subprocess.run([str(python), "-c", REF_SCRIPT], env=env,
                       capture_output=True, text=True, check=False)
  if res.returncode:
    print(f"reference run failed:\n{res.stderr[-2000:]}", file=sys.stderr)
    return None
  return json.loads(res.stdout.strip().splitlines()[-1])


def table(rows: list[list[str]]) -> str:
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
  return "\n".join([lines[0], "-" * len(lines[0])] + lines[1:])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--configs", default="tiny,small")
  p.add_argument("--modes", default="train,forward")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--peak_n", type=int, default=2048)
  p.add_argument("--peak_reps", type=int, default=5)
  p.add_argument("--threads", type=int, default=2,
                 help="torch threads (the reference's; compare.sh uses 2)")
  p.add_argument("--no-ref", action="store_true")
  p.add_argument("--ref_steps", type=int, default=None,
                 help="timed reference steps (default --steps)")
  p.add_argument("--flatten", default="auto", choices=("auto", "on", "off"),
                 help="config.optim.flatten of our train step")
  p.add_argument("--json", default="", help="write all figures here")
  args = p.parse_args(argv)
  configs = [c for c in args.configs.split(",") if c]
  modes = [m for m in args.modes.split(",") if m]
  cores = os.cpu_count() or 1

  peak = {"jax": jax_peak(args.peak_n, args.peak_reps)}
  ref = None if args.no_ref else reference(
      configs, args.ref_steps or args.steps, min(args.warmup, 1), args.peak_n, args.peak_reps,
      args.threads)
  if ref:
    peak["torch"] = ref.pop("peak")
  # The machine's matmul peak per CPU-second (load-independent), and the
  # quiet-machine figure = that x the cores both sides use.
  best_cpu = max(v["cpu_gflops"] for v in peak.values())
  quiet_peak = best_cpu * min(args.threads, cores)

  us_per_op = op_overhead()
  rows = [["config", "mode", "XLA GFLOP", "dot+conv GFLOP", "ref GFLOP",
           "ours ms (CPU ms)", "ref ms (CPU ms)", "ours %peak", "ref %peak",
           "bound ms", "best ratio", "ratio (CPU)", "XLA ops",
           "op floor CPU ms"]]
  figures = {"peak": peak, "us_per_op": us_per_op, "peak_cpu_gflops": best_cpu,
             "quiet_peak_gflops": quiet_peak, "steps": {}}
  for name in configs:
    for mode in modes:
      o = ours(name, mode, args.steps, args.warmup, args.flatten)
      r = (ref or {}).get(name, {}).get(mode)
      mm = o["dot_flops"] + o["conv_flops"]
      # CPU-time based: FLOPs / (CPU-s x per-CPU-s peak) = share of peak.
      frac = mm / 1e9 / (o["cpu_ms"] / 1e3) / best_cpu
      bound_ms = mm / 1e9 / quiet_peak * 1e3
      ref_cpu = r["cpu_ms"] if r else None
      ref_frac = (r["flops"] / 1e9 / (ref_cpu / 1e3) / best_cpu) if r else None
      best = (ref_cpu / min(args.threads, cores) / bound_ms) if r else None
      figures["steps"][f"{name}/{mode}"] = {"ours": o, "ref": r,
                                            "bound_ms": bound_ms}
      rows.append([
          name, mode, f"{(o['xla_flops'] or 0) / 1e9:.2f}", f"{mm / 1e9:.2f}",
          f"{r['flops'] / 1e9:.2f}" if r else "n/a",
          f"{o['wall_ms']:.1f} ({o['cpu_ms']:.1f})",
          f"{r['wall_ms']:.1f} ({r['cpu_ms']:.1f})" if r else "n/a",
          f"{frac:.1%}", f"{ref_frac:.1%}" if r else "n/a",
          f"{bound_ms:.2f}", f"{best:.1f}x" if r else "n/a",
          f"{ref_cpu / o['cpu_ms']:.2f}x" if r else "n/a",
          str(o["hlo_ops"]), f"{o['hlo_ops'] * us_per_op / 1e3:.1f}"])
  print(f"matmul peak ({args.peak_n}^3 float32, {args.threads} threads, "
        f"{cores} cores): " + "; ".join(
            f"{k} {v['wall_gflops']:.1f} GFLOP/s wall, {v['cpu_gflops']:.1f} "
            "GFLOP per CPU-s" for k, v in peak.items()))
  print(f"quiet-machine peak = {best_cpu:.1f} GFLOP per CPU-s x "
        f"{min(args.threads, cores)} cores = {quiet_peak:.1f} GFLOP/s\n")
  print(f"per-op overhead: {us_per_op:.2f} CPU-us per XLA kernel (400 "
        "independent 64-element fusions)\n")
  print(table(rows))
  print("\n%peak = matmul FLOPs / (CPU-s of the step x peak per CPU-s) "
        "(ref: torch's FLOP counter); bound ms = our dot+conv FLOPs at the "
        "quiet-machine peak; best ratio = reference CPU-ms / cores / bound "
        "(the most ref/ours can reach if every FLOP ran at peak); ratio "
        "(CPU) = reference CPU ms / ours (same threads); op floor = XLA ops x "
        "per-op overhead.")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(figures, indent=2))
  return 0


if __name__ == "__main__":
  runtime.initialize()
  sys.exit(main())
