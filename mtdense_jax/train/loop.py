"""The training loop: one function per phase, then the explicit loop.

Resume order (first that applies): (1) the latest checkpoint in
WORKDIR/checkpoints (params, optimizer, weighting state and the data
iterator, so the resumed run is step-for-step identical to an uninterrupted
one); (2) ``config.init_checkpoint``: params only, e.g. converted published
weights; (3) scratch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, Mapping

import jax
from jax.experimental import multihost_utils
import optax
from jax.sharding import Mesh

from mtdense_jax import runtime
from mtdense_jax.data import pipeline, sources
from mtdense_jax.evaluators import dense
from mtdense_jax.gradmethods import base as gm_base
from mtdense_jax.tasks import base as task_base
from mtdense_jax.train import checkpointing as ckpt
from mtdense_jax.train import optim
from mtdense_jax.train import report
from mtdense_jax.train import sharding as shd
from mtdense_jax.train import stages
from mtdense_jax.train import state as state_lib
from mtdense_jax.train import step as step_lib
from mtdense_jax.train import writers


@dataclasses.dataclass
class Experiment:
  """Everything built from the config that the phases share."""
  config: Any
  mesh: Mesh
  tasks: dict[str, task_base.Task]
  factory: Any
  meta: dict[str, Any]
  weighting: Any
  tx: Any
  schedule: Any


def build_tasks(config, meta: Mapping[str, Any]) -> dict[str, task_base.Task]:
  """Task objects in config order, sized from the dataset's metadata.

  Keyed by Task.name (a dotted plugin entry such as "my_lab.tasks.curvature"
  is keyed by the name its Task declares); config.task_kw takes either.
  """
  available = list(meta.get("tasks", []))
  num_classes = dict(meta.get("num_classes", {}))
  task_kw = config.get("task_kw", {})
  tasks = {}
  for entry in config.tasks:
    cls = task_base.task_class(entry)
    name = cls.name
    if available and name not in available:
      raise ValueError(
          f"config.tasks has {entry!r} but dataset {config.data.name}/"
          f"{config.data.config} provides only {available}.")
    if name in tasks:
      raise ValueError(f"config.tasks names task {name!r} twice.")
    kw = dict(task_kw.get(name, None) or task_kw.get(entry, None) or {})
    tasks[name] = cls(num_classes=num_classes.get(name),
                      protocol=config.eval.protocol, **kw)
  return tasks


def build_weighting(config):
  """A loss weighting or a gradient method, by ``config.weighting.name``."""
  return gm_base.build(config.weighting.name,
                       config.weighting.get("kw", {}) or {})


def setup(config, devices=None) -> Experiment:
  mesh = shd.make_mesh(config.get("mesh"), devices)
  n_data = mesh.shape["data"]
  for key in ("train.batch_size", "eval.batch_size"):
    size = config[key.split(".")[0]][key.split(".")[1]]
    if size % n_data:
      raise ValueError(
          f"config.{key}={size} does not split over the {n_data} devices of "
          "the mesh's data axis; use a multiple of it (or set config.mesh).")
  builder = sources.get_builder(config.data)
  # Process 0 prepares first; the others then find a shared data_dir ready
  # (or prepare their own local one) instead of racing to write it.
  if jax.process_index() == 0:
    sources.prepare(builder)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("mtdense_jax:data_prepared")
    sources.prepare(builder)
  return build_experiment(config, sources.dataset_meta(builder), mesh)


def build_experiment(config, meta: Mapping[str, Any],
                     mesh: Mesh) -> Experiment:
  """Everything but the data: tasks sized from `meta`, model factory,
  optimizer, weighting. Benchmarks call it with metadata of their own."""
  tasks = build_tasks(config, meta)
  outputs = {n: t.num_outputs for n, t in tasks.items()}
  factory = state_lib.model_factory(config.model, outputs,
                                    tuple(config.data.image_size), config.seed)
  model_tx, schedule = optim.make_model_optimizer(
      config.optim, devices=mesh.devices.size)
  # Loss-weighting parameters (e.g. uncertainty log-variances) get plain Adam
  # on the same schedule: no weight decay pulling them to 0, no clipping.
  tx = optax.multi_transform(
      {"model": model_tx, "weighting": optax.adam(schedule)},
      lambda tree: {k: jax.tree.map(lambda _, k=k: k, v)
                    for k, v in tree.items()})
  return Experiment(config, mesh, tasks, factory, dict(meta),
                    build_weighting(config), tx, schedule)


def trainable(config) -> tuple[str, ...]:
  """``config.model.trainable``: the trainable variable classes' names."""
  return tuple(config.model.get("trainable", None)
               or state_lib.DEFAULT_TRAINABLE)


def compile_train_step(exp: Experiment, defs, shardings):
  fn = step_lib.bind(step_lib.train_step, defs=defs, tasks=exp.tasks,
                     weighting=exp.weighting, tx=exp.tx,
                     loss_cfg=step_lib.LossConfig.from_config(exp.config.loss),
                     rng=jax.random.key(exp.config.seed + 1),
                     grad_accum=int(exp.config.train.get("grad_accum", 1)))
  repl = shd.replicated(exp.mesh)
  return jax.jit(fn, in_shardings=(shardings, shd.batch_sharding(exp.mesh),
                                   repl),
                 out_shardings=(shardings, repl, repl), donate_argnums=(0, 2))


def compile_eval_step(exp: Experiment, defs, shardings):
  fn = step_lib.bind(step_lib.eval_step, defs=defs, tasks=exp.tasks)
  repl = shd.replicated(exp.mesh)
  return jax.jit(fn, in_shardings=(shardings["params"],
                                   shardings["batch_stats"], repl,
                                   shd.batch_sharding(exp.mesh)),
                 out_shardings=repl)  # Totals are tiny; tasks may share
                                      # constant buffers, so no donation.


def make_boundary_eval(exp: Experiment, defs,
                       shardings) -> dense.BoundaryEval | None:
  """The offline boundary benchmark, when enabled and a task has one."""
  bcfg = exp.config.eval.get("boundary", {})
  if not (bcfg.get("enabled") and
          any(t.boundary_metric for t in exp.tasks.values())):
    return None
  from mtdense_jax.evaluators import boundary  # pylint: disable=g-import-not-at-top
  max_dist = bcfg.get("max_dist") or exp.meta.get("edge_max_dist")
  if not max_dist:
    raise ValueError("config.eval.boundary.max_dist is unset and dataset "
                     f"{exp.config.data.name} has no edge_max_dist.")
  fn = step_lib.bind(step_lib.predict_step, defs=defs, tasks=exp.tasks)
  predict = jax.jit(fn, in_shardings=(shardings["params"],
                                      shardings["batch_stats"],
                                      shd.batch_sharding(exp.mesh)))
  return dense.BoundaryEval(
      predict, lambda: boundary.BoundaryEvaluator(
          float(max_dist), bcfg.get("thresholds"), matcher=bcfg.get("matcher"),
          processes=bcfg.get("processes", -1), chunks=bcfg.get("chunks", 1),
          seed=bcfg.get("seed", boundary.DEFAULT_SEED),
          gt_mode=bcfg.get("gt_mode", "auto")),
      gt_key=bcfg.get("gt_key"))


def evaluate(exp: Experiment, eval_fn, params, batch_stats,
             boundary: dense.BoundaryEval | None = None) -> dict[str, float]:
  cfg = exp.config
  keep = (boundary.gt_key,) if boundary and boundary.gt_key else ()
  batches = pipeline.make_eval_iter(
      cfg.data, exp.tasks, split=cfg.data.eval_split,
      global_batch_size=cfg.eval.batch_size, keep=keep)
  repl = shd.replicated(exp.mesh)

  def step(p, s, stats, batch):
    # The initial totals are uncommitted single-device arrays, the step's
    # own outputs committed replicated ones: without this the eval step
    # compiles twice (tests/test_compile_once.py). A no-op after batch 1.
    return eval_fn(p, s, jax.device_put(stats, repl), batch)

  return dense.evaluate(exp.tasks, step, params, batch_stats,
                        (shd.global_batch(b, exp.mesh) for b in batches),
                        stl_baselines=cfg.eval.get("stl_baselines"),
                        boundary=boundary, num_batches=len(batches))


def _check_finite(acc: Mapping[str, float], step: int) -> None:
  bad = [k.split("/", 1)[1] for k, v in acc.items()
         if k.startswith("loss/") and not math.isfinite(v)]
  if bad or not math.isfinite(acc["total"]):
    raise FloatingPointError(
        f"Non-finite loss before step {step} for task(s) {bad or ['total']}; "
        "stopping. The last good checkpoint is kept; lower the learning rate "
        "or check the labels of these tasks.")


def _json(tree: Any) -> Any:
  """JSON-safe copy (the checkpoint meta item is JSON)."""
  return json.loads(json.dumps(tree, default=str))


def _mean(acc: Mapping[str, jax.Array]) -> dict[str, float]:
  host = jax.device_get(acc)
  n = max(float(host["count"]), 1.0)
  return {k: float(v) / n for k, v in host.items() if k != "count"}


@runtime.stop_on_signals       # SIGTERM / first SIGINT: checkpoint, exit 0
@ckpt.settle_saves_on_error    # an error never strands an async save
def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains (resuming if WORKDIR has checkpoints), evaluates, checkpoints.

  Returns the metrics of the final evaluation.
  """
  if config.get("stages"):
    return stages.run(config, workdir, train_and_evaluate)
  workdir = pathlib.Path(workdir)
  with report.Timer(f"Preparing dataset {config.data.name}",
                    f"Dataset {config.data.name} ready"):
    exp = setup(config)
  tcfg = config.train
  writer = writers.MetricWriter(workdir)
  defs, state, shardings = state_lib.init_state(
      exp.factory, exp.tx, exp.weighting, list(exp.tasks), exp.mesh,
      config.get("sharding"), trainable(config))
  report.say("Parameters:\n" + report.parameter_table(
      {"params": state["params"], "batch_stats": state["batch_stats"]}))
  data_iter = pipeline.make_train_iter(
      config.data, exp.tasks, global_batch_size=tcfg.batch_size,
      seed=config.seed)
  mngr = ckpt.manager(workdir / "checkpoints", max_to_keep=tcfg.keep_ckpts,
                      save_every=tcfg.ckpt_every)
  saver = ckpt.Saver(mngr)
  meta = {"config": json.loads(config.to_json_best_effort()),
          "dataset_meta": _json(exp.meta)}
  resumed = ckpt.restore_latest(mngr, state, shardings, data_iter,
                                config=meta["config"])
  if resumed is not None:
    state, resumed_step = resumed
    print(f"Resumed from {workdir}/checkpoints step {resumed_step}",
          flush=True)
  elif config.get("init_checkpoint") and (
      config.init_restore.include or config.init_restore.exclude):
    state = stages.restore(config, state, shardings)
  elif config.get("init_checkpoint"):
    params, _ = ckpt.restore_params(
        config.init_checkpoint,
        ckpt.abstract({"params": state["params"],
                        "batch_stats": state["batch_stats"]},
                       {"params": shardings["params"],
                        "batch_stats": shardings["batch_stats"]}))
    state = {**state, **params}
  if jax.process_index() == 0:   # Only now: a failed restore keeps a good
    # run's files (predict --workdir reads them).
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    # Inference needs the head sizes without the dataset being present.
    (workdir / "dataset_meta.json").write_text(
        json.dumps(meta["dataset_meta"], indent=2))

  train_fn = compile_train_step(exp, defs, shardings)
  eval_fn = compile_eval_step(exp, defs, shardings)
  boundary = make_boundary_eval(exp, defs, shardings)
  start = int(jax.device_get(state["step"]))
  progress = writers.Progress(tcfg.steps, start)
  acc = jax.device_put(step_lib.zero_acc(exp.tasks, exp.weighting),
                       shd.replicated(exp.mesh))
  metrics = {}
  first = report.Timer("Compiling the train step (first step)",
                       "First step (compile included)") \
      if start < tcfg.steps else None
  for step in range(start + 1, tcfg.steps + 1):
    batch = shd.global_batch(next(data_iter), exp.mesh)
    if first is not None:
      with first:
        state, _, acc = jax.block_until_ready(train_fn(state, batch, acc))
      first = None
      report.say(f"Training to step {tcfg.steps}; a progress line every "
                 f"{tcfg.log_every} steps.")
    else:
      state, _, acc = train_fn(state, batch, acc)
    is_last = step == tcfg.steps
    if step % tcfg.log_every == 0 or step % tcfg.ckpt_every == 0 or is_last:
      means = _mean(acc)
      _check_finite(means, step)
      acc = jax.device_put(step_lib.zero_acc(exp.tasks, exp.weighting),
                           shd.replicated(exp.mesh))
      means["lr"] = float(exp.schedule(step - 1))
      writer.scalars(step, means, prefix="train/")
      if jax.process_index() == 0:
        print(progress.line(step, {k: v for k, v in means.items()
                                   if k == "total" or k.startswith("loss/")}),
              flush=True)
    if step % tcfg.ckpt_every == 0 or is_last:
      saver.assert_finite(state, step)   # never commit a poisoned state
      saver.save(step, state, data_iter, meta=meta, force=is_last)
    if step % tcfg.eval_every == 0 or is_last:
      metrics = evaluate(exp, eval_fn, state["params"], state["batch_stats"],
                         boundary)
      writer.evaluation(step, metrics)
      if tcfg.get("keep_best_metric"):
        ckpt.keep_best(workdir / "best", step, state, metrics,
                       tcfg.keep_best_metric, tcfg.keep_best_mode,
                       meta={"dataset_meta": meta["dataset_meta"]})
    if runtime.stop_requested():
      if saver.last_saved != step:
        saver.assert_finite(state, step)
        saver.save(step, state, data_iter, meta=meta, force=True)
      saver.wait()
      print(f"Stopped by {runtime.stop_requested()} at step {step}; "
            f"checkpoint saved in {workdir / 'checkpoints'}. Run the same "
            "command again to resume.", flush=True)
      break
  if start >= tcfg.steps:
    print(f"Already trained to step {start}; evaluating.", flush=True)
    metrics = evaluate(exp, eval_fn, state["params"], state["batch_stats"],
                       boundary)
    writer.evaluation(start, metrics)
  saver.close()
  writer.close()
  if not runtime.stop_requested():
    report.say(report.end_summary(workdir, max(start, tcfg.steps), metrics))
  return metrics


def evaluate_checkpoint(config, workdir: str, checkpoint: str | None = None,
                        step: int | None = None) -> dict[str, float]:
  """--mode eval: restores only the params and runs every metric."""
  workdir = pathlib.Path(workdir)
  exp = setup(config)
  defs, abs_params, abs_stats = state_lib.model_defs(exp.factory,
                                                     trainable(config))
  abstract = {"params": abs_params, "batch_stats": abs_stats}
  repl = shd.replicated(exp.mesh)
  shardings = {"params": shd.strategy_shardings(abs_params, exp.mesh,
                                                config.get("sharding")),
               "batch_stats": jax.tree.map(lambda _: repl, abs_stats)}
  directory = checkpoint or str(workdir / "checkpoints")
  params, step = ckpt.restore_params(
      directory, ckpt.abstract(abstract, shardings), step,
      config=json.loads(config.to_json_best_effort()))
  eval_fn = compile_eval_step(exp, defs, shardings)
  metrics = evaluate(exp, eval_fn, params["params"], params["batch_stats"],
                     make_boundary_eval(exp, defs, shardings))
  writer = writers.MetricWriter(workdir)
  writer.evaluation(step, metrics, filename="eval_metrics.jsonl")
  if jax.process_index() == 0:
    (workdir / f"eval_step{step}.json").write_text(
        json.dumps({"step": step, **metrics}, indent=2))
  writer.close()
  return metrics
