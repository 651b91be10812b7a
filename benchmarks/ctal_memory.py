r"""CTAL cross-task affinity: peak memory and time, direct vs fused form.

  python benchmarks/ctal_memory.py [--batch 1] [--iters 3] [--chunk 1024]

For each recipe input size the module runs at the recipe's feature
resolution: 288x384 (NYUv2) and 128x256 (Cityscapes) at 1/4 (HRNet + fuse,
3 and 2 tasks), 512x512 (PASCAL) at 1/32 (Swin-V2-S, 5 tasks); C = 128.
Prints the compiled program's temp bytes (``memory_analysis``) of the
forward and of forward + backward, and the time per image of each, for the
reference's direct form (T stacked n x n affinities + grouped conv) and the
chunked fused form (``--chunk`` query rows at a time, rematerialised).
Programs over ``--max_run_mib`` of temp memory are compiled, not run.
"""

from __future__ import annotations

import sys
import pathlib
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # pylint: disable=g-import-not-at-top
from flax import nnx
import jax
import jax.numpy as jnp

from mtdense_jax.models.layers import ctal_affinity as ca

flags.DEFINE_integer("batch", 1, "Images per call.")
flags.DEFINE_integer("iters", 3, "Timed calls (after one warm-up).")
flags.DEFINE_integer("chunk", 1024, "Query rows per chunk (fused form).")
flags.DEFINE_string("only", "", "Run only the cases whose name contains "
                    "this (e.g. cityscapes).")
flags.DEFINE_integer("max_run_mib", 2048, "Only time programs whose temp "
                     "memory is below this (the rest: compiled, not run).")
FLAGS = flags.FLAGS

# (name, input size, feature stride, tasks)
CASES = (("nyuv2 288x384", (288, 384), 4, 3),
         ("cityscapes 128x256", (128, 256), 4, 2),
         ("pascal 512x512", (512, 512), 32, 5))


def _measure(fn, *args) -> tuple[int, float]:
  compiled = jax.jit(fn).lower(*args).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  if temp > FLAGS.max_run_mib * 2**20:
    return temp, float("nan")
  jax.block_until_ready(compiled(*args))
  t0 = time.perf_counter()
  for _ in range(FLAGS.iters):
    jax.block_until_ready(compiled(*args))
  return temp, (time.perf_counter() - t0) / FLAGS.iters / FLAGS.batch


def main(_):
  print(f"backend {jax.default_backend()}, batch {FLAGS.batch}, "
        f"chunk {FLAGS.chunk}, C 128, float32 (nan ms: over --max_run_mib, "
        "compiled only)", flush=True)
  print(f"{'case':20s} {'features':>9s} {'n':>6s} {'form':7s} "
        f"{'fwd MiB':>9s} {'fwd ms/img':>10s} {'f+b MiB':>9s} "
        f"{'f+b ms/img':>10s}")
  for name, (h, w), stride, n_tasks in CASES:
    if FLAGS.only not in name:
      continue
    hw = (h // stride, w // stride)
    tasks = tuple(f"t{i}" for i in range(n_tasks))
    x = {t: jax.random.normal(jax.random.key(i), (FLAGS.batch, *hw, 128))
         for i, t in enumerate(tasks)}
    for mode in ca.MODES[::-1]:
      mod = ca.CrossTaskAffinity(tasks, 128, hw, 0.05, mode=mode,
                                 chunk=FLAGS.chunk, rngs=nnx.Rngs(0))
      graph, params = nnx.split(mod)

      def fwd(p, x, graph=graph):
        return nnx.merge(graph, p)(x)

      def fwd_bwd(p, x, graph=graph):
        def loss(p, x):
          return sum(jnp.sum(v) for v in nnx.merge(graph, p)(x).values())
        return jax.grad(loss, argnums=(0, 1))(p, x)

      f_mem, f_t = _measure(fwd, params, x)
      b_mem, b_t = _measure(fwd_bwd, params, x)
      print(f"{name:20s} {hw[0]:>4d}x{hw[1]:<4d} {hw[0] * hw[1]:>6d} "
            f"{mode:7s} {f_mem / 2**20:9.1f} {f_t * 1e3:10.1f} "
            f"{b_mem / 2**20:9.1f} {b_t * 1e3:10.1f}", flush=True)


if __name__ == "__main__":
  app.run(main)
