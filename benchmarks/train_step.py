r"""Train-step speed of InvPT: step time, images/s, peak memory, FLOPs, MFU.

  python benchmarks/train_step.py --backbone S,B,L --size nyud,pascal \
      --batch 2 --dtype bfloat16 --steps 20 --warmup 3 --peak_tflops 989 \
      --out invpt_step.json
  python benchmarks/train_step.py --backbone tiny --hw 64x64 --batch 2 \
      --steps 3                      # CPU smoke run, seconds
  python benchmarks/train_step.py --backbone tiny --hw 64x64 --batch 2 \
      --steps 30 --host_overhead     # Python time per step outside XLA
  python benchmarks/train_step.py --ref-config ../shared/perf/configs.json:tiny \
      --mode train --warmup 10 --steps 50 --json   # ../shared/perf/compare.sh
  python benchmarks/train_step.py --encoder swin_t,hrnet --model taskprompter \
      --hw 128x128 --warmup 1 --steps 3        # any encoder + baseline decoder

``--ref-config FILE:NAME`` builds the model of a perf configuration
(../shared/perf/configs.json: ViT sizes and taps, decoder widths, tasks and
head sizes, loss weights, optimizer, batch and image size) through the
paper config of its dataset (configs/<dataset>_invpt.py) and prints one JSON
line (``--json``) with median_ms, params (trainable; must equal the file's
params_used) and compile_s. ``--mode forward`` times the eval-mode forward
(BatchNorm running statistics, no drop path) returning every prediction.
``--encoder NAME`` is configs/synthetic_baseline.py:encoder=NAME (the
baseline decoder), ``--model NAME`` is configs/synthetic_NAME.py; both run at
``--hw`` (default 128x128) with the synthetic scenes' head sizes, and the row
adds ms per image. Run as a script, the persistent compilation cache is on
as for launch.py (MTDENSE_JAX_CACHE=DIR or =off for a cold compile_s).

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
import re
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top
import ml_collections as mlc
import numpy as np

from mtdense_jax import config_check, runtime
from mtdense_jax.data import sources
from mtdense_jax.train import loop
from mtdense_jax.train import sharding as shd
from mtdense_jax.train import state as state_lib
from mtdense_jax.train import step as step_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZES = {"nyud": ("nyud_invpt.py", (448, 576)),
         "pascal": ("pascal_invpt.py", (512, 512))}
# Optimizer names of the perf configurations -> config.optim.name (both
# use torch.optim.Adam semantics: L2 decay added to the gradient).
REF_OPTIMIZERS = {("adam", "coupled_l2"): "adam",
                  ("adam", "decoupled"): "adamw"}


def make_config(backbone: str, config_file: str, hw: tuple[int, int],
                batch: int, dtype: str):
  """The paper config (or its runlocal model for 'tiny') at `hw`."""
  spec = str(REPO / "configs" / config_file)
  spec += ":runlocal" if backbone == "tiny" else f":backbone={backbone}"
  return sized_config(spec, hw, batch, dtype)


def sized_config(spec: str, hw: tuple[int, int], batch: int, dtype: str):
  """Any config file ('path.py[:arg]') at image size `hw` and `batch`;
  a bad config exits with its one-line error."""
  try:
    cfg = config_check.load_config_file(spec)
    cfg.data.image_size = hw
    cfg.train.batch_size = batch
    cfg.model.dtype = dtype
    config_check.validate(cfg)
  except config_check.ConfigError as e:
    raise SystemExit(f"{spec}: {e}") from None
  return cfg


def dataset_meta(cfg) -> dict[str, Any]:
  """The dataset's metadata (head sizes) from its builder's info: nothing
  is read or prepared."""
  return sources.dataset_meta(sources.get_builder(cfg.data))


def make_experiment(cfg, meta: dict[str, Any] | None = None,
                    devices: int = 0) -> loop.Experiment:
  """loop.setup without the dataset (metadata only), on the first
  `devices` devices (0: all)."""
  return loop.build_experiment(
      cfg, meta or dataset_meta(cfg),
      shd.make_mesh(cfg.mesh, jax.devices()[:devices or None]))


def load_ref_config(spec: str) -> dict[str, Any]:
  """'path/configs.json:NAME' -> that configuration's dict (plus "name")."""
  path, sep, name = spec.rpartition(":")
  if not sep or not name:
    raise SystemExit(f"--ref-config {spec!r}: expected FILE:NAME, e.g. "
                     "../shared/perf/configs.json:tiny")
  try:
    configs = json.loads(pathlib.Path(path).read_text())["configs"]
  except (OSError, ValueError, KeyError) as e:
    raise SystemExit(f"--ref-config {path}: not a perf configs.json "
                     f"({e})") from None
  if name not in configs:
    raise SystemExit(f"--ref-config: {path} has no configuration {name!r}; "
                     f"one of {sorted(configs)}")
  return {"name": name, **configs[name]}


def ref_experiment(ref: dict[str, Any], dtype: str = "float32"):
  """The perf configuration as (config, metadata): the paper config of its
  dataset with the model, tasks, loss weights, optimizer, batch and size of
  the configuration. Head sizes come from its task_outputs."""
  if ref["dataset"] not in SIZES:
    raise SystemExit(f"--ref-config {ref['name']}: dataset "
                     f"{ref['dataset']!r}; one of {sorted(SIZES)}")
  v, d, o = ref["vit"], ref["decoder"], ref["optimizer"]
  if d["D"] != d["embed_dim"] + d["pred_out"]:
    raise SystemExit(f"--ref-config {ref['name']}: decoder D={d['D']} is "
                     "not embed_dim + pred_out")
  kind = (o["name"], o.get("weight_decay_kind", "coupled_l2"))
  if kind not in REF_OPTIMIZERS:
    raise SystemExit(f"--ref-config {ref['name']}: optimizer {kind}; one "
                     f"of {sorted(REF_OPTIMIZERS)}")
  cfg = config_check.load_config_file(
      str(REPO / "configs" / SIZES[ref["dataset"]][0]) + ":backbone=S")
  cfg.tasks = tuple(ref["tasks"])
  cfg.data.image_size = (ref["H"], ref["W"])
  cfg.train.batch_size = ref["batch"]
  cfg.model.dtype = dtype
  cfg.model.encoder_kw = mlc.ConfigDict(dict(
      width=v["width"], depth=v["depth"], num_heads=v["heads"],
      taps=tuple(v["taps"]), patch_size=v["patch"], mlp_ratio=v["mlp_ratio"],
      drop_path_rate=v["drop_path_rate"]))
  cfg.model.decoder_kw = mlc.ConfigDict(dict(
      embed_dim=d["embed_dim"], pred_out_constant=d["pred_out"]))
  cfg.weighting.name = "fixed"
  cfg.weighting.kw = mlc.ConfigDict(dict(weights=dict(ref["loss_weights"])))
  cfg.optim.name = REF_OPTIMIZERS[kind]
  cfg.optim.lr = o["lr"]
  cfg.optim.weight_decay = o["weight_decay"]
  cfg.optim.schedule = o["schedule"]
  cfg.optim.poly_power = o["poly_power"]
  cfg.optim.total_steps = o["total_steps"]
  config_check.validate(cfg)
  meta = {"tasks": list(ref["tasks"]),
          "num_classes": dict(ref["task_outputs"])}
  return cfg, meta


def check_heads(exp: loop.Experiment, task_outputs: dict[str, int]) -> None:
  """Every task's output channels are the configuration's."""
  got = {n: t.num_outputs for n, t in exp.tasks.items()}
  if got != dict(task_outputs):
    raise SystemExit(f"task outputs {got} differ from the configuration's "
                     f"task_outputs {dict(task_outputs)}")


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


def hlo_ops(compiled) -> dict[str, int]:
  """Kernels the compiled program runs per call: instructions of its entry
  computation (and of while/call bodies) other than parameters, tuples,
  get-tuple-element, bitcasts and constants; fusions counted apart. On CPU
  each costs microseconds of dispatch whatever its size."""
  free = {"parameter", "tuple", "get-tuple-element", "bitcast", "constant"}
  ops = fusions = 0
  text = compiled.as_text()
  for block in text.split("\n\n"):
    head = block.lstrip().split("\n", 1)[0]
    if head.startswith("%fused") or head.startswith("fused"):
      continue        # bodies of fusions are one kernel each
    for line in block.splitlines()[1:]:
      m = re.search(r"= \S+ ([a-z][a-z0-9-]*)\(", line)
      if not m or m.group(1) in free:
        continue
      ops += 1
      fusions += m.group(1) == "fusion"
  return {"hlo_ops": ops, "hlo_fusions": fusions}


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


def eval_forward(params, batch_stats, image, *, graphdef) -> dict:
  """The eval-mode forward (BatchNorm running statistics, no drop path):
  every prediction the model returns (finals and auxiliary heads)."""
  return state_lib.merge(graphdef, params, batch_stats)(image, rngs=None)


def build(cfg, meta: dict[str, Any] | None = None, mode: str = "train",
          devices: int = 0) -> dict[str, Any]:
  """Compiles the real train step (``mode="train"``) or the eval forward
  (``"forward"``); returns the experiment, the compiled program, its
  compile phases and ``call()``, one step blocked on all of its outputs."""
  exp = make_experiment(cfg, meta, devices)
  hw, batch = tuple(cfg.data.image_size), cfg.train.batch_size
  defs, state, shardings = state_lib.init_state(
      exp.factory, exp.tx, exp.weighting, list(exp.tasks), exp.mesh,
      cfg.get("sharding"), loop.trainable(cfg))
  data = shd.global_batch(random_batch(exp.tasks, batch, hw), exp.mesh)
  acc = jax.device_put(step_lib.zero_acc(exp.tasks), shd.replicated(exp.mesh))
  if mode == "train":
    fn, fn_args = loop.compile_train_step(exp, defs, shardings), (
        state, data, acc)
  else:
    fn = jax.jit(step_lib.bind(eval_forward, graphdef=defs.eval),
                 in_shardings=(shardings["params"], shardings["batch_stats"],
                               shd.batch_sharding(exp.mesh)))
    fn_args = (state["params"], state["batch_stats"], data["image"])
  # compile_s = trace (Python) + lower (StableHLO) + XLA compile or
  # persistent-cache load; the phases are reported too.
  start = time.perf_counter()
  traced = fn.trace(*fn_args)
  trace_s = time.perf_counter() - start
  lowered = traced.lower()
  lower_s = time.perf_counter() - start - trace_s
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  carry = {"state": state, "acc": acc}

  def call():
    if mode == "train":
      carry["state"], metrics, carry["acc"] = compiled(
          carry["state"], data, carry["acc"])
      return jax.block_until_ready((carry["state"], metrics))[1]
    return jax.block_until_ready(compiled(
        carry["state"]["params"], carry["state"]["batch_stats"],
        data["image"]))

  return {"exp": exp, "compiled": compiled, "traced": traced,
          "call": call, "carry": carry,
          "data": data, "compile_s": compile_s, "trace_s": trace_s,
          "lower_s": lower_s}


def measure(cfg, label: str, steps: int, warmup: int,
            peak_tflops: float | None, profile_dir: str = "",
            overhead: bool = False, meta: dict[str, Any] | None = None,
            mode: str = "train", devices: int = 0) -> dict[str, Any]:
  """`build`, then times `steps` calls after `warmup`, each blocked on
  all of its outputs inside the timed region."""
  built = build(cfg, meta, mode, devices)
  exp, compiled, call, carry, data = (built[k] for k in (
      "exp", "compiled", "call", "carry", "data"))
  compile_s, trace_s, lower_s = (built[k] for k in (
      "compile_s", "trace_s", "lower_s"))
  hw, batch = tuple(cfg.data.image_size), cfg.train.batch_size
  for _ in range(warmup):
    call()
  times = []
  # A jax.profiler trace of the timed steps (TensorBoard/Perfetto), on request.
  trace = (jax.profiler.trace(f"{profile_dir}/{label}_{hw[0]}x{hw[1]}")
           if profile_dir else contextlib.nullcontext())
  with trace:
    for i in range(steps):
      start = time.perf_counter()
      with jax.profiler.StepTraceAnnotation(mode, step_num=i):
        out = call()
      times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  flops = _flops(compiled)
  n_dev = exp.mesh.devices.size
  n_params = sum(x.size for x in jax.tree.leaves(carry["state"]["params"]))
  row = {"backbone": label, "mode": mode,
         "hw": f"{hw[0]}x{hw[1]}", "tasks": ",".join(cfg.tasks),
         "batch": batch, "dtype": cfg.model.dtype, "devices": n_dev,
         "params": int(n_params), "params_M": n_params / 1e6,
         "compile_s": compile_s, "trace_s": trace_s, "lower_s": lower_s,
         "xla_s": compile_s - trace_s - lower_s,
         "step_ms": 1e3 * step_s, "step_ms_min": 1e3 * min(times),
         "ms_per_image": 1e3 * step_s / batch,
         "times_ms": [1e3 * t for t in times],
         "images_per_s": batch / step_s,
         "loss": float(out["total"]) if mode == "train" else None,
         "gflop_per_image": flops * n_dev / batch / 1e9 if flops else None,
         "tflops_per_device": flops / step_s / 1e12 if flops else None,
         "mfu": (flops / step_s / (peak_tflops * 1e12)
                 if flops and peak_tflops else None),
         "peak_mem_gib": (_peak_memory() or 0) / 2**30 or None,
         "backend": jax.default_backend(), **hlo_ops(compiled)}
  if overhead and mode == "train":
    row.update(host_overhead(carry["state"], data, carry["acc"], compiled,
                             steps))
  return row


def _parse_value(text: str) -> Any:
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return {"true": True, "false": False}.get(text.lower(), text)


def ab(cfg, label: str, spec: str, steps: int, warmup: int,
       meta: dict[str, Any] | None = None, mode: str = "train",
       devices: int = 0) -> list[dict[str, Any]]:
  """``spec`` = 'dotted.key=V1,V2,...': one compiled step per value, timed
  round-robin (V1, V2, ..., V1, V2, ...) so that load on a shared machine
  hits every variant alike. Per variant: median wall ms, median process CPU
  ms (all threads), XLA ops, and ratios to the first variant."""
  key, sep, values = spec.partition("=")
  if not sep or not values:
    raise SystemExit(f"--ab {spec!r}: expected dotted.key=V1,V2")
  variants = []
  for text in values.split(","):
    c = cfg.copy_and_resolve_references()
    node = c
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = _parse_value(text)
    built = build(c, meta, mode, devices)
    for _ in range(warmup):
      built["call"]()
    variants.append((f"{key}={text}", built))
  wall = {name: [] for name, _ in variants}
  cpu = {name: [] for name, _ in variants}
  for _ in range(steps):
    for name, built in variants:
      w, c = time.perf_counter(), time.process_time()
      built["call"]()
      cpu[name].append(time.process_time() - c)
      wall[name].append(time.perf_counter() - w)
  rows = []
  for name, built in variants:
    rows.append({"backbone": label, "mode": mode, "variant": name,
                 "step_ms": 1e3 * statistics.median(wall[name]),
                 "cpu_ms": 1e3 * statistics.median(cpu[name]),
                 "compile_s": built["compile_s"],
                 **hlo_ops(built["compiled"])})
  for r in rows:
    r["wall_vs_first"] = rows[0]["step_ms"] / r["step_ms"]
    r["cpu_vs_first"] = rows[0]["cpu_ms"] / r["cpu_ms"]
  return rows


def contract_line(row: dict[str, Any], ref: dict[str, Any],
                  warmup: int) -> dict[str, Any]:
  """The JSON line of ../shared/perf/README.md (median_ms, params,
  compile_s) with the configuration's params_used beside params."""
  return {"config": ref["name"], "mode": row["mode"],
          "median_ms": round(row["step_ms"], 3),
          "min_ms": round(row["step_ms_min"], 3),
          "max_ms": round(max(row["times_ms"]), 3),
          "step_ms": [round(t, 2) for t in row["times_ms"]],
          "params": row["params"], "params_used": ref["params_used"],
          "compile_s": round(row["compile_s"], 3),
          "compile_phases_s": {k: round(row[f"{k}_s"], 3)
                               for k in ("trace", "lower", "xla")},
          "images_per_s": round(row["images_per_s"], 3),
          "batch": row["batch"], "H": ref["H"], "W": ref["W"],
          "warmup": warmup, "steps": len(row["times_ms"]),
          "loss_total_last": row["loss"], "backend": row["backend"],
          "jax": jax.__version__}


COLUMNS = (("backbone", "{}"), ("mode", "{}"), ("hw", "{}"), ("batch", "{}"),
           ("dtype", "{}"), ("params_M", "{:.2f}"), ("compile_s", "{:.1f}"),
           ("step_ms", "{:.1f}"), ("ms_per_image", "{:.1f}"),
           ("images_per_s", "{:.2f}"),
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


def parse_size(text: str) -> tuple[int, int]:
  h, _, w = text.lower().partition("x")
  return int(h), int(w)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--backbone", default="S",
                 help="comma list of S, B, L, tiny")
  p.add_argument("--size", default="nyud", help="comma list of nyud, pascal")
  p.add_argument("--hw", default="", help="HxW (overrides --size), e.g. "
                 "128x128; NYUD tasks. --encoder/--model default: 128x128")
  p.add_argument("--batch", type=int, default=2, help="global batch")
  p.add_argument("--dtype", default="float32",
                 choices=("float32", "bfloat16"))
  p.add_argument("--mode", default="train", choices=("train", "forward"),
                 help="train step (default) or eval-mode forward")
  p.add_argument("--steps", type=int, default=10, help="timed steps")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps")
  p.add_argument("--ref-config", default="",
                 help="FILE:NAME of a perf configs.json (../shared/perf): "
                 "that model, batch and size instead of --backbone/--size")
  p.add_argument("--encoder", default="",
                 help="comma list of configs/synthetic_baseline.py "
                 "encoder= values (baseline decoder), e.g. swin_t,hrnet")
  p.add_argument("--model", default="",
                 help="comma list of NAME for configs/synthetic_NAME.py, "
                 "e.g. taskprompter,invpt")
  p.add_argument("--devices", type=int, default=None,
                 help="use the first N devices (default: all; 1 with "
                 "--ref-config, as the single-process reference)")
  p.add_argument("--json", action="store_true",
                 help="print one JSON line per row on stdout (the table "
                 "goes to stderr)")
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="device peak TFLOP/s for MFU (H100 bf16: 989)")
  p.add_argument("--out", default="", help="write the rows as JSON here")
  p.add_argument("--host_overhead", action="store_true",
                 help="also time the dispatch (Python outside XLA) of the "
                 "step and of a trivial step over the same state")
  p.add_argument("--ab", default="",
                 help="dotted.key=V1,V2: compare config values on the "
                 "(first) job, timed round-robin, e.g. optim.flatten=off,on")
  p.add_argument("--profile", default="",
                 help="write a jax.profiler trace of the timed steps here")
  args = p.parse_args(argv)
  if args.steps < 1 or args.warmup < 0:
    p.error("--steps must be >= 1 and --warmup >= 0")
  return args


def jobs(args) -> list[tuple[str, Any, dict[str, Any] | None,
                             dict[str, Any] | None]]:
  """(label, config, metadata or None, perf configuration or None) per row."""
  if args.ref_config:
    ref = load_ref_config(args.ref_config)
    cfg, meta = ref_experiment(ref, args.dtype)
    return [(ref["name"], cfg, meta, ref)]
  out = []
  hw = parse_size(args.hw or "128x128")
  for name in filter(None, (e.strip() for e in args.encoder.split(","))):
    spec = f"{REPO / 'configs' / 'synthetic_baseline.py'}:encoder={name}"
    out.append((name, sized_config(spec, hw, args.batch, args.dtype), None,
                None))
  for name in filter(None, (m.strip() for m in args.model.split(","))):
    spec = str(REPO / "configs" / f"synthetic_{name}.py")
    if not pathlib.Path(spec).is_file():
      raise SystemExit(f"--model {name}: no configs/synthetic_{name}.py")
    out.append((name, sized_config(spec, hw, args.batch, args.dtype), None,
                None))
  if out:
    return out
  if args.hw:
    shapes = [("nyud_invpt.py", parse_size(args.hw))]
  else:
    shapes = [SIZES[s.strip()] for s in args.size.split(",")]
  for backbone in (b.strip() for b in args.backbone.split(",")):
    for config_file, hw in shapes:
      out.append((backbone, make_config(backbone, config_file, hw,
                                        args.batch, args.dtype), None, None))
  return out


def main(argv=None) -> int:
  args = parse_args(argv)
  text = sys.stderr if args.json else sys.stdout
  rows = []
  if args.ab:
    label, cfg, meta, ref = jobs(args)[0]
    devices = args.devices if args.devices is not None else (
        1 if ref is not None else 0)
    out = ab(cfg, label, args.ab, args.steps, args.warmup, meta, args.mode,
             devices)
    print(f"{label} {args.mode}, {args.steps} round-robin steps after "
          f"{args.warmup} warm-up each; ratios = first variant / this one "
          "(> 1: faster)", file=text)
    for r in out:
      print(f"  {r['variant']:<28} {r['step_ms']:8.2f} ms wall "
            f"(x{r['wall_vs_first']:.3f})  {r['cpu_ms']:8.2f} ms CPU "
            f"(x{r['cpu_vs_first']:.3f})  {r['hlo_ops']:5d} XLA ops "
            f"({r['hlo_fusions']} fusions)  compile {r['compile_s']:.1f} s",
            file=text)
      if args.json:
        print(json.dumps(r), flush=True)
    return 0
  for label, cfg, meta, ref in jobs(args):
    devices = args.devices if args.devices is not None else (
        1 if ref is not None else 0)
    row = measure(cfg, label, args.steps, args.warmup, args.peak_tflops,
                  args.profile, args.host_overhead, meta, args.mode, devices)
    rows.append(row)
    if ref is not None:
      check_heads(make_experiment(cfg, meta, devices), ref["task_outputs"])
      if row["params"] != ref["params_used"]:
        print(f"WARNING: {row['params']:,} parameters, the reference "
              f"{ref['name']} trains {ref['params_used']:,}: not the same "
              "model", file=sys.stderr)
    if args.json:
      line = (contract_line(row, ref, args.warmup) if ref is not None else
              {k: v for k, v in row.items()})
      print(json.dumps(line), flush=True)
    print(table(rows[-1:]).splitlines()[-1] if len(rows) > 1 else
          table(rows), file=text, flush=True)
  print(f"\n{jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"{jax.device_count()} device(s); median of {args.steps} steps "
        f"after {args.warmup} warm-up; {args.mode} mode; FLOPs per image = "
        "XLA cost analysis of the whole compiled step.\n", file=text)
  print(table(rows), file=text)
  if args.host_overhead:
    for r in rows:
      if "dispatch_ms" in r:
        print(f"{r['backbone']} {r['hw']}: host dispatch "
              f"{r['dispatch_ms']:.2f} ms/step (step {r['step_ms']:.1f} ms); "
              f"trivial step over the same state {r['trivial_ms']:.2f} ms; "
              f"state flatten+unflatten {r['tree_ms']:.2f} ms; "
              f"{r['state_nodes']} pytree nodes in the state", file=text)
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(rows, indent=2))
  return 0


if __name__ == "__main__":
  # The persistent compilation cache as launch.py uses it: compile_s is the
  # cached figure once a configuration ran (MTDENSE_JAX_CACHE=off: cold).
  runtime.initialize()
  sys.exit(main())
