r"""Quickstart quality check: the trained model against trivial baselines.

  python benchmarks/quickstart.py [--workdir runs/quickstart] [--config ...]

With a trained WORKDIR (a checkpoint and config.json) it only reads it: the
config is WORKDIR/config.json unless --config is given, the latest
checkpoint's params are evaluated, and nothing is written into WORKDIR.
Without a checkpoint it first trains --config (default the main job,
configs/synthetic_invpt.py) there. Then it prints each validation metric
next to the trivial predictor of that task, fitted on the training split:
majority class (semseg, human_parts), mean depth, mean unit normal,
all-background edges, all-background saliency.
"""

from __future__ import annotations

import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax import config_check, runtime  # pylint: disable=g-import-not-at-top
from mtdense_jax import predict
from mtdense_jax.data import pipeline
from mtdense_jax.train import checkpointing as ckpt
from mtdense_jax.train import loop
from mtdense_jax.train import sharding as shd
from mtdense_jax.train import state as state_lib

flags.DEFINE_string("workdir", "runs/quickstart", "Run directory.")
flags.DEFINE_string("config", None, "Config spec (default: WORKDIR/"
                    "config.json, or configs/synthetic_invpt.py to train).")
flags.DEFINE_integer("fit_batches", 20, "Train batches to fit baselines on.")
FLAGS = flags.FLAGS


# How each task's trivial predictor is fitted on training labels.
TRIVIAL = {"semseg": "majority", "human_parts": "majority", "sal": "majority",
           "depth": "mean", "normals": "mean_direction", "edge": "background"}


def fit_trivial(cfg, tasks) -> dict[str, np.ndarray]:
  """Per task, the constant raw network output of the trivial predictor."""
  it = pipeline.make_train_iter(cfg.data, list(tasks), global_batch_size=8,
                                seed=123)
  sums = {name: 0.0 for name in tasks}
  for _ in range(FLAGS.fit_batches):
    batch = next(it)
    for name, task in tasks.items():
      label = batch[name].astype(np.float64)
      ok = np.all(label != 255, axis=-1)
      if TRIVIAL[name] == "majority":
        sums[name] = sums[name] + np.bincount(
            label[..., 0][ok].astype(int), minlength=task.num_outputs)
      else:
        sums[name] = sums[name] + np.append(label[ok].sum(0), ok.sum())
  const = {}
  for name, task in tasks.items():
    kind, s = TRIVIAL[name], sums[name]
    if kind == "majority":   # one-hot logits of the most frequent class
      const[name] = np.where(np.arange(task.num_outputs) == np.argmax(s),
                             10.0, -10.0)
    elif kind == "background":
      const[name] = np.full((task.num_outputs,), -10.0)
    else:
      mean = s[:-1] / max(s[-1], 1)
      if kind == "mean_direction":
        mean = mean / max(np.linalg.norm(mean), 1e-12)
      const[name] = mean
  return const


def trivial_metrics(cfg, tasks, const) -> dict[str, float]:
  stats = {n: t.metric_init() for n, t in tasks.items()}
  # The constants are an argument, not a closure: XLA would constant-fold
  # the broadcast predictions otherwise (slow, noisy compile).
  update = jax.jit(lambda s, b, c: {
      n: t.metric_update(s[n], jnp.broadcast_to(
          c[n], b[n].shape[:3] + c[n].shape), b[n], b["valid"])
      for n, t in tasks.items()})
  const = {n: np.asarray(v, np.float32) for n, v in const.items()}
  for batch in pipeline.make_eval_iter(cfg.data, list(tasks),
                                       global_batch_size=cfg.eval.batch_size):
    stats = update(stats, batch, const)
  out = {}
  for n, t in tasks.items():
    for k, v in t.metric_compute(jax.device_get(stats[n])).items():
      if np.ndim(v) == 0:
        out[f"{n}/{k}"] = float(v)
  return out


def main(argv):
  del argv
  runtime.initialize()
  runtime.quiet_logs()
  workdir = pathlib.Path(FLAGS.workdir)
  trained = (workdir / "checkpoints").is_dir() and any(
      p.name.isdigit() for p in (workdir / "checkpoints").iterdir())
  if trained:
    spec = FLAGS.config or str(workdir / "config.json")
    try:
      cfg = predict.load_config(spec)
    except FileNotFoundError as e:
      sys.exit(f"Error: {e}")
    # Read-only: params of the latest checkpoint, nothing written.
    exp = loop.setup(cfg)
    defs, abs_params, abs_stats = state_lib.model_defs(exp.factory)
    repl = shd.replicated(exp.mesh)
    shardings = {"params": jax.tree.map(lambda _: repl, abs_params),
                 "batch_stats": jax.tree.map(lambda _: repl, abs_stats)}
    try:
      params, step = ckpt.restore_params(
          (workdir / "checkpoints").absolute(),
          ckpt.abstract({"params": abs_params, "batch_stats": abs_stats},
                        shardings))
    except (ValueError, KeyError) as e:
      sys.exit(f"Error: the checkpoint in {workdir} does not match config "
               f"{spec} ({type(e).__name__}); drop --config to use the "
               "workdir's own.")
    print(f"Evaluating {workdir} step {step} (config {spec}; read-only).")
    model = loop.evaluate(exp, loop.compile_eval_step(exp, defs, shardings),
                          params["params"], params["batch_stats"])
  else:
    cfg = config_check.load_config_file(
        FLAGS.config or "configs/synthetic_invpt.py")
    model = loop.train_and_evaluate(cfg, FLAGS.workdir)
    exp = loop.setup(cfg)
  trivial = trivial_metrics(cfg, exp.tasks, fit_trivial(cfg, exp.tasks))
  print(f"\n{'metric':<24}{'model':>12}{'trivial':>12}  better")
  for key in sorted(model):
    if key not in trivial:
      continue
    task, metric = key.split("/", 1)
    higher = exp.tasks[task].metric_directions.get(metric)
    if higher is None:
      continue
    better = model[key] > trivial[key] if higher else model[key] < trivial[key]
    print(f"{key:<24}{model[key]:>12.4f}{trivial[key]:>12.4f}  "
          f"{'yes' if better else 'NO'}")


if __name__ == "__main__":
  runtime.help_and_exit_if_asked(sys.argv, __doc__)
  app.run(main)
