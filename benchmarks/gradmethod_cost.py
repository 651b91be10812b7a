r"""Extra cost of the gradient methods: step time and XLA temp memory.

  python benchmarks/gradmethod_cost.py --backbone tiny --hw 64x64 --batch 2 \
      --steps 3                       # CPU, about a minute
  python benchmarks/gradmethod_cost.py --backbone S --size nyud --batch 4

Times, on random batches, the gradient computation only (no optimizer) of
the model of configs/nyud_invpt.py (``tiny`` = its runlocal model):
``sum`` = one backward of the summed losses (what loss weighting costs),
``params`` = `gradmethods.base.params_step` (encoder parameters shared),
``representation`` = `representation_step` (the encoder output is the
shared feature), both with `--method`. Memory is XLA's compiled temp
allocation (``memory_analysis().temp_size_in_bytes``), deterministic on any
backend. The train step runs the same computation (`train/step.py`
``_method_grads``); benchmarks/mtl_methods.py times whole train steps.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from flax import nnx  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp

import train_step as bench  # benchmarks/train_step.py helpers
from mtdense_jax import registry
from mtdense_jax.gradmethods import base
from mtdense_jax.train import state as state_lib
from mtdense_jax.train import step as step_lib


def build(cfg, exp, batch):
  """(encode_fn, heads_fn, enc_params, dec_params) for the config's model."""
  model = exp.factory()
  model.train()
  enc_def, enc_p, enc_s = state_lib.split_model(model.encoder)
  dec_def, dec_p, dec_s = state_lib.split_model(model.decoder)
  image = jnp.asarray(batch["image"])
  labels = {k: jnp.asarray(v) for k, v in batch.items() if k != "image"}
  loss_cfg = step_lib.LossConfig.from_config(cfg.loss)

  def encode_fn(p):
    return nnx.merge(enc_def, p, enc_s, copy=True)(
        image, rngs=nnx.Rngs(dropout=0))

  def heads_fn(o, z):
    preds = nnx.merge(dec_def, o, dec_s, copy=True)(
        z, rngs=nnx.Rngs(dropout=1))
    terms = step_lib.loss_terms(exp.tasks, preds, labels, loss_cfg)
    return step_lib.split_terms(terms, loss_cfg)[0], None

  return encode_fn, heads_fn, enc_p, dec_p


def timed(fn, args, steps):
  compiled = jax.jit(fn).lower(*args).compile()
  mem = compiled.memory_analysis()
  temp = getattr(mem, "temp_size_in_bytes", None) if mem else None
  jax.block_until_ready(compiled(*args))
  t0 = time.perf_counter()
  for _ in range(steps):
    jax.block_until_ready(compiled(*args))
  return (time.perf_counter() - t0) / steps, temp


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--backbone", default="tiny")
  ap.add_argument("--size", default="nyud", choices=sorted(bench.SIZES))
  ap.add_argument("--hw", default="")
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--method", default="pcgrad")
  args = ap.parse_args(argv)
  config_file, hw = bench.SIZES[args.size]
  if args.hw:
    hw = tuple(int(v) for v in args.hw.split("x"))
  cfg = bench.make_config(args.backbone, config_file, hw, args.batch,
                          "float32")
  exp = bench.make_experiment(cfg)
  batch = bench.random_batch(exp.tasks, args.batch, hw)
  batch.pop("valid", None)
  encode_fn, heads_fn, enc_p, dec_p = build(cfg, exp, batch)
  method = registry.lookup("gradmethod", args.method).Method()
  state = method.init(list(exp.tasks))
  step = jnp.zeros((), jnp.int32)

  def loss_fn(s, o):
    return heads_fn(o, encode_fn(s))

  def summed(s, o):
    return jax.grad(lambda s, o: sum(loss_fn(s, o)[0].values()),
                    argnums=(0, 1))(s, o)

  runs = {
      "sum": summed,
      "params": lambda s, o: base.params_step(method, loss_fn, s, o, state,
                                              step)[1],
      "representation": lambda s, o: base.representation_step(
          method, encode_fn, heads_fn, s, o, state, step)[1],
  }
  t = len(exp.tasks)
  print(f"{args.method}, {t} tasks, backbone {args.backbone}, {hw}, batch "
        f"{args.batch}, {jax.devices()[0].platform}")
  base_time = base_mem = None
  for name, fn in runs.items():
    sec, temp = timed(fn, (enc_p, dec_p), args.steps)
    base_time = base_time or sec
    base_mem = base_mem or temp
    mem = (f"{temp / 2**20:8.1f} MiB ({temp / base_mem:4.2f}x)" if temp
           else "n/a")
    print(f"  {name:15s} {sec * 1e3:9.1f} ms ({sec / base_time:4.2f}x)  "
          f"temp {mem}")


if __name__ == "__main__":
  main()
