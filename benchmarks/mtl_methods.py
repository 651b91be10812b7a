r"""Which multi-task method, on which tasks: every loss weighting and gradient
method on the synthetic scenes, same model, data, seeds and budget.

  python benchmarks/mtl_methods.py --steps 150 --out /tmp/mtl/results.json
  python benchmarks/mtl_methods.py --steps 2000 --size 128 --num_train 1024 \
      --out runs/mtl/results.json          # a budget worth reading

For each task set (``nyud_like``: semseg, depth, normals, edge;
``pascal_like``: semseg, human_parts, sal, normals, edge) and decoder
(``baseline`` per-task heads, ``invpt``) on the same small ViT, and for each
seed, it trains every method of ``--methods`` (default: every gradient
method at its default mode, famo, fixed (all weights 1), uncertainty, dwa,
lps) for ``--steps`` steps, plus one single-task run per task: the same
network trained on that task's loss alone (the other heads get no
gradient), the reference of Delta_m (`evaluators/delta_m.py`; edge enters
through its online loss, as no boundary benchmark runs here). A method
name may carry its mode: ``pcgrad:representation``.

Prints per-task validation metrics (mean +- std over seeds), Delta_m in %,
steps/s (wall clock after compilation, on whatever else the machine runs)
and XLA's compiled temp memory of the train step (deterministic); writes
every run to ``--out`` (JSON, rewritten after each run) and a plot of
Delta_m per method next to it (``.png``).

Cost control: one compiled train step per (task set, decoder, method),
reused across seeds (the dropout key is an argument); the single-task runs
share one compiled step (their one-hot task weights live in the weighting
state); one compiled eval step per (task set, decoder); the model is
initialised once per seed and copied into every method's state.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import pathlib
import sys
import time
from typing import Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from mtdense_jax import config_check
from mtdense_jax import config_defaults
from mtdense_jax import registry
from mtdense_jax import runtime
from mtdense_jax.data import pipeline
from mtdense_jax.evaluators import delta_m as delta_m_lib
from mtdense_jax.gradmethods import base as gm_base
from mtdense_jax.train import loop
from mtdense_jax.train import state as state_lib
from mtdense_jax.train import step as step_lib
from mtdense_jax.weighting import base as w_base

REPO = pathlib.Path(__file__).resolve().parents[1]
WEIGHTINGS = ("famo", "fixed", "uncertainty", "dwa", "lps")
STL = "single_task"


@dataclasses.dataclass(frozen=True, kw_only=True)
class OneTask(w_base.Weighting):
  """The single-task reference: weight 1 on the task its state names, 0 on
  the others (state, not a constant, so every task shares one compile)."""

  def init(self, task_names: Sequence[str]) -> tuple[dict, dict]:
    return {}, {"w": jnp.zeros((len(task_names),), jnp.float32)}

  def __call__(self, params, state, losses, step):
    del params, step
    w = state["w"]
    weights = {t: w[i] for i, t in enumerate(losses)}
    return sum(weights[t] * losses[t] for t in losses), state, weights


def make_config(args, taskset: str, decoder: str) -> mlc.ConfigDict:
  """The quickstart recipe (configs/synthetic_*.py runlocal model) at
  ``--size`` square images, or ``--config`` as written; then ``--set``."""
  if args.config:
    cfg = config_check.load_config_file(args.config)
    cfg.data.data_dir = args.data_dir
    cfg.data.worker_count = 0
    cfg.train.batch_size = cfg.eval.batch_size = args.batch
    cfg.train.steps = cfg.optim.total_steps = args.steps
    cfg.optim.warmup_steps = max(1, args.steps // 10)
    if args.lr is not None:
      cfg.optim.lr = args.lr
  else:
    cfg = _recipe_config(args, taskset, decoder)
  for item in args.set:
    config_defaults.apply_override(cfg, item)
  return cfg


def combos(args) -> list[tuple[str, str]]:
  """(task set, decoder) pairs to run: ``--config``'s own, or the grid."""
  if args.config:
    cfg = make_config(args, "", "")
    return [(cfg.data.config, cfg.model.decoder)]
  return [(t, d) for d in args.decoders.split(",")
          for t in args.tasksets.split(",")]


def _recipe_config(args, taskset: str, decoder: str) -> mlc.ConfigDict:
  name = "synthetic_invpt.py" if decoder == "invpt" else "synthetic_baseline.py"
  cfg = config_check.load_config_file(
      f"{REPO / 'configs' / name}:runlocal,steps={args.steps}")
  cfg.data.config = taskset
  cfg.data.data_dir = args.data_dir
  cfg.data.builder_kwargs = mlc.ConfigDict(dict(
      height=args.size, width=args.size, num_train=args.num_train,
      num_validation=args.num_val))
  cfg.data.image_size = (args.size, args.size)
  cfg.data.worker_count = 0
  cfg.tasks = tuple(registry_tasks(taskset))
  # Three ascending taps for the decoders (the default needs depth >= 4).
  taps = tuple(max(1, round(args.depth * f)) for f in (1 / 3, 2 / 3, 1))
  cfg.model.encoder_kw = mlc.ConfigDict(dict(width=48, depth=args.depth,
                                             num_heads=3, taps=taps))
  cfg.train.batch_size = cfg.eval.batch_size = args.batch
  cfg.train.steps = cfg.optim.total_steps = args.steps
  cfg.optim.warmup_steps = max(1, args.steps // 10)
  cfg.optim.lr = 1e-3 if args.lr is None else args.lr
  return cfg


def registry_tasks(taskset: str) -> tuple[str, ...]:
  # pylint: disable-next=g-import-not-at-top
  from data_builders.synthetic_scenes import builder
  return next(c.tasks for c in builder.BUILDER_CONFIGS if c.name == taskset)


def weighting_for(spec: str, tasks: Sequence[str]):
  """`--methods` entry -> weighting slot object. An entry is "name", then
  optionally ":mode" and/or ":key=value" keyword arguments (Python
  literals), e.g. "pcgrad:representation" or "dwa:period=5"."""
  if spec == STL:
    return OneTask()
  name, *parts = spec.split(":")
  kw = {}
  for part in parts:
    key, sep, raw = part.partition("=")
    if not sep:
      kw["mode"] = part
      continue
    try:
      kw[key] = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      kw[key] = raw
  return gm_base.build(name, kw)


def loss_config(exp, single_task: bool) -> step_lib.LossConfig:
  """The config's loss assembly; a single-task reference puts the aux terms
  inside its one-hot weighting, so the other tasks' aux heads (added after
  the weighting with ``aux_mode="outside"``) do not train it."""
  cfg = step_lib.LossConfig.from_config(exp.config.loss)
  return dataclasses.replace(cfg, aux_mode="inside") if single_task else cfg


def compile_train(exp, defs, weighting, state, batch, acc, loss_cfg):
  fn = step_lib.bind(step_lib.train_step, defs=defs, tasks=exp.tasks,
                     weighting=weighting, tx=exp.tx, loss_cfg=loss_cfg)
  jitted = jax.jit(lambda s, b, a, r: fn(s, b, a, rng=r),
                   donate_argnums=(0, 2))
  t0 = time.perf_counter()
  compiled = jitted.lower(state, batch, acc, jax.random.key(0)).compile()
  mem = compiled.memory_analysis()
  temp = getattr(mem, "temp_size_in_bytes", None) if mem else None
  return compiled, time.perf_counter() - t0, temp


def fresh_state(init, exp, weighting, stl_task=None):
  """The seed's initial model + this method's weighting state + Adam."""
  params = jax.tree.map(jnp.array, init["params"])
  wparams, wstate = weighting.init(list(exp.tasks))
  if stl_task is not None:
    wstate = {"w": jnp.asarray([float(t == stl_task) for t in exp.tasks])}
  state = {"step": jnp.zeros((), jnp.int32), "params": params,
           "batch_stats": init["batch_stats"], "wparams": wparams,
           "wstate": wstate,
           "opt": exp.tx.init({"model": params, "weighting": wparams})}
  # One buffer per leaf (inits share zeros arrays; the step donates them).
  return jax.tree.map(lambda x: jnp.array(x, copy=True), state)


def train(compiled, state, exp, weighting, seed, steps):
  it = pipeline.make_train_iter(exp.config.data, list(exp.tasks),
                                global_batch_size=exp.config.train.batch_size,
                                seed=seed)
  acc = step_lib.zero_acc(exp.tasks, weighting)
  rng = jax.random.key(seed + 1)
  last = {}
  for i in range(steps):
    if i == 1:   # time from the second step: no first-call transfers
      jax.block_until_ready(state)
      t0 = time.perf_counter()
    state, metrics, acc = compiled(state, next(it), acc, rng)
    if i >= steps - 20:   # the mean of the last 20 steps' train metrics
      last = jax.tree.map(lambda a, b: a + b, last, metrics) if last else \
          metrics
  jax.block_until_ready(state)
  secs = time.perf_counter() - t0
  n = min(20, steps)
  train_metrics = {k: float(v) / n for k, v in jax.device_get(last).items()}
  return state, (steps - 1) / secs, train_metrics


def nested(flat: dict) -> dict:
  out = {}
  for k, v in flat.items():
    if "/" in k:
      task, metric = k.split("/", 1)
      out.setdefault(task, {})[metric] = v
  return out


def run_combo(args, taskset, decoder, methods, records, out, done):
  cfg = make_config(args, taskset, decoder)
  devices = jax.devices()[:1]
  exp = loop.setup(cfg, devices)
  tasks = list(exp.tasks)
  eval_fn = None
  compiled = {}
  for seed in range(args.seeds):
    cfg.seed = seed
    seed_exp = loop.build_experiment(cfg, exp.meta, exp.mesh)
    defs, init, shardings = state_lib.init_state(
        seed_exp.factory, seed_exp.tx, w_base.Weighting(), tasks,
        seed_exp.mesh)
    init = jax.device_get({k: init[k] for k in ("params", "batch_stats")})
    if eval_fn is None:
      eval_fn = loop.compile_eval_step(seed_exp, defs, shardings)
    batch = next(pipeline.make_train_iter(
        cfg.data, tasks, global_batch_size=cfg.train.batch_size, seed=seed))
    runs = [(m, None) for m in methods] + [(STL, t) for t in tasks]
    stl_metrics = {}
    mtl = []
    for spec, stl_task in runs:
      key = (taskset, decoder, spec, stl_task, seed)
      if key in done:   # --resume: this run is in --out already
        rec = done[key]
        records.append(rec)
        if stl_task is not None:
          stl_metrics[stl_task] = nested(rec["metrics"])[stl_task]
        else:
          mtl.append(rec)
        continue
      weighting = weighting_for(spec, tasks)
      state = fresh_state(init, seed_exp, weighting, stl_task)
      if spec not in compiled:
        acc = step_lib.zero_acc(seed_exp.tasks, weighting)
        compiled[spec] = compile_train(
            seed_exp, defs, weighting, state, batch, acc,
            loss_config(seed_exp, stl_task is not None))
      fn, compile_s, temp = compiled[spec]
      state, sps, train_metrics = train(fn, state, seed_exp, weighting, seed,
                                        args.steps)
      metrics = loop.evaluate(seed_exp, eval_fn, state["params"],
                              state["batch_stats"])
      rec = {"taskset": taskset, "decoder": decoder, "method": spec,
             "tasks": tasks, "stl_task": stl_task, "seed": seed,
             "steps": args.steps,
             "metrics": metrics, "train": train_metrics,
             "steps_per_s": sps, "compile_s": compile_s,
             "temp_mib": temp / 2**20 if temp else None}
      records.append(rec)
      if stl_task is not None:
        stl_metrics[stl_task] = nested(metrics)[stl_task]
      else:
        mtl.append(rec)
      print(f"  {taskset} {decoder} seed {seed} {spec}"
            f"{'/' + stl_task if stl_task else ''}: {sps:.1f} steps/s, "
            + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()),
            flush=True)
      write(out, records, args)
    directions = delta_m_lib.directions_from_tasks(seed_exp.tasks)
    for rec in mtl:
      got = {t: nested(rec["metrics"])[t] for t in tasks}
      rec["delta_m"] = delta_m_lib.delta_m(got, stl_metrics, directions)
    for rec in records:
      if (rec["taskset"], rec["decoder"]) == (taskset, decoder):
        rec["directions"] = directions
    write(out, records, args)


def write(out: pathlib.Path, records, args):
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"args": vars(args), "runs": records}, indent=1))


def summarise(records, methods) -> str:
  lines = []
  combos = sorted({(r["taskset"], r["decoder"]) for r in records})
  for taskset, decoder in combos:
    rows = [r for r in records if (r["taskset"], r["decoder"]) ==
            (taskset, decoder)]
    tasks = rows[0].get("tasks") or registry_tasks(taskset)
    directions = next(r["directions"] for r in rows if "directions" in r)
    cols = [(t, directions[t][0]) for t in tasks]
    # Full metric names: they may carry the protocol (rmse_lt6.5535m).
    names = [f"{t[:11]}/{m}" for t, m in cols]
    width = [max(17, len(n) + 2) for n in names]
    mw = max([22] + [len(m) + 2 for m in methods])
    head = (f"{'method':{mw}s}" + "".join(f"{n:>{w}s}"
                                          for n, w in zip(names, width))
            + f"{'delta_m %':>14s}{'steps/s':>9s}{'temp MiB':>9s}")
    lines += ["", f"== {taskset}, {decoder} decoder, {rows[0]['steps']} "
              f"steps, {len({r['seed'] for r in rows})} seeds (mean +- std "
              "over seeds) ==", head]
    for m in list(methods) + [STL]:
      rs = [r for r in rows if r["method"] == m]
      if not rs:
        continue
      cells = []
      for t, metric in cols:
        vals = [nested(r["metrics"])[t][metric] for r in rs
                if m != STL or r["stl_task"] == t]
        cells.append(f"{np.mean(vals):9.4f}+-{np.std(vals):<6.4f}")
      dm = [100 * r["delta_m"] for r in rs if "delta_m" in r]
      dms = f"{np.mean(dm):7.2f}+-{np.std(dm):<5.2f}" if dm else f"{'-':>13s}"
      lines.append(f"{m:{mw}s}" + "".join(f"{c:>{w}s}"
                                          for c, w in zip(cells, width))
                   + f"{dms:>14s}{np.mean([r['steps_per_s'] for r in rs]):9.1f}"
                   + f"{rs[0]['temp_mib'] or float('nan'):9.1f}")
  return "\n".join(lines)


def plot(records, methods, path: pathlib.Path):
  # pylint: disable-next=g-import-not-at-top
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  combos = sorted({(r["taskset"], r["decoder"]) for r in records
                   if "delta_m" in r})
  if not combos:
    return
  fig, axes = plt.subplots(1, len(combos), figsize=(4.5 * len(combos), 4.5),
                           squeeze=False, sharey=True)
  for ax, (taskset, decoder) in zip(axes[0], combos):
    for i, m in enumerate(methods):
      dm = [100 * r["delta_m"] for r in records if "delta_m" in r and
            (r["taskset"], r["decoder"], r["method"]) == (taskset, decoder, m)]
      if not dm:
        continue
      ax.errorbar([np.mean(dm)], [i], xerr=[np.std(dm)], fmt="o",
                  color="C0" if ":" in m or m not in WEIGHTINGS else "C1")
      ax.scatter(dm, [i] * len(dm), s=8, color="gray", alpha=0.6)
    ax.axvline(0, color="k", lw=0.5)
    ax.set_yticks(range(len(methods)), methods)
    ax.set_title(f"{taskset}, {decoder}")
    ax.set_xlabel("Delta_m vs single-task (%)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--steps", type=int, default=150, help="train steps (the "
                  "budget; the same for every method and reference)")
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--size", type=int, default=64, help="square image side "
                  "(InvPT needs a multiple of 64)")
  ap.add_argument("--num_train", type=int, default=256)
  ap.add_argument("--num_val", type=int, default=64)
  ap.add_argument("--lr", type=float, default=None,
                  help="default 1e-3 (the recipe); --config keeps its own")
  ap.add_argument("--config", default=None, help="a config file (with "
                  "':arg' suffix) to use instead of the recipe grid: its "
                  "task set and decoder, trained --steps at --batch")
  ap.add_argument("--set", action="append", default=[],
                  help="config override key.sub=value (Python literal), "
                  "applied last; repeatable")
  ap.add_argument("--tasksets", default="nyud_like,pascal_like")
  ap.add_argument("--decoders", default="baseline,invpt")
  ap.add_argument("--methods", default=",".join(
      registry.available("gradmethod") + list(WEIGHTINGS)))
  ap.add_argument("--data_dir", default=str(pathlib.Path.home() /
                                            "tensorflow_datasets"))
  ap.add_argument("--depth", type=int, default=3,
                  help="ViT blocks (>= 3: the decoders tap three)")
  ap.add_argument("--out", default="runs/mtl_methods/results.json")
  ap.add_argument("--resume", action="store_true", help="keep the runs "
                  "already in --out (same --steps) and do the rest")
  ap.add_argument("--report", action="store_true", help="only print the "
                  "table and plot of an existing --out (e.g. a partial run)")
  args = ap.parse_args(argv)
  methods = args.methods.split(",")
  out = pathlib.Path(args.out)
  if args.report:
    records = json.loads(out.read_text())["runs"]
    plot(records, methods, out.with_suffix(".png"))
    print(summarise(records, methods))
    return
  done = {}
  if args.resume and out.exists():
    for r in json.loads(out.read_text())["runs"]:
      if r["steps"] == args.steps:
        done[(r["taskset"], r["decoder"], r["method"], r["stl_task"],
              r["seed"])] = r
  runtime.initialize()
  runtime.quiet_logs()
  records = []
  t0 = time.perf_counter()
  where = args.config or f"{args.size}px"
  print(f"{len(methods)} methods + single-task references, {args.seeds} "
        f"seeds, {args.steps} steps, {where}, batch {args.batch}, "
        f"{jax.devices()[0].platform}", flush=True)
  for taskset, decoder in combos(args):
    run_combo(args, taskset, decoder, methods, records, out, done)
    print(summarise(records, methods), flush=True)
  plot(records, methods, out.with_suffix(".png"))
  print(summarise(records, methods))
  print(f"\nwrote {out} and {out.with_suffix('.png')}; total "
        f"{(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
  main()
