r"""Peak temporary memory per image of MT-CP's CFM: direct vs chunked.

The CFM's affinity is (hw x hw) per image: 3.7e8 float32 entries (1.4 GiB)
at NYUD's 120x160 feature map (480x640 input), 2.7e8 at PASCAL's 128x128.
This compiles the CFM's forward and its forward + backward (a gradient of
a scalar of the output w.r.t. the inputs and parameters) for one image at
reference width (dim 256, two other tasks) and prints XLA's
``memory_analysis()`` temp bytes for the materialised form
(``cfm_attention="direct"``) and the chunked one, per chunk size. Nothing
runs: only compilation (~1 min on CPU).

  python benchmarks/mtcp_memory.py [--chunks 1024,2048] [--sizes nyud,pascal]
"""

from __future__ import annotations

import argparse

from flax import nnx
import jax
import jax.numpy as jnp

from mtdense_jax.models.layers import mtcp_blocks as blocks

SIZES = {"nyud": (120, 160), "pascal": (128, 128)}
DIM, OTHERS = 256, 2


def temp_bytes(attention: str, chunk: int, hw: tuple[int, int],
               grad: bool) -> int:
  cfm = nnx.eval_shape(lambda: blocks.CFM(
      DIM, OTHERS, attention=attention, chunk=chunk, rngs=nnx.Rngs(0),
      dtype=jnp.float32))
  graphdef, state = nnx.split(cfm)
  x = jax.ShapeDtypeStruct((1, *hw, DIM), jnp.float32)
  others = [x] * OTHERS

  def fwd(state, x, others):
    return nnx.merge(graphdef, state)(x, others)

  def loss(state, x, others):
    return jnp.sum(jnp.sin(fwd(state, x, others)))

  fn = jax.grad(loss, argnums=(0, 1, 2)) if grad else fwd
  compiled = jax.jit(fn).lower(state, x, others).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--chunks", default="1024")
  p.add_argument("--sizes", default="nyud,pascal")
  args = p.parse_args()
  print(f"backend {jax.default_backend()}; CFM dim {DIM}, {OTHERS} other "
        "tasks, batch 1; XLA temp bytes (MiB)")
  for name in args.sizes.split(","):
    hw = SIZES[name]
    n = hw[0] * hw[1]
    print(f"{name}: feature {hw[0]}x{hw[1]} (hw {n}; one float32 hw x hw "
          f"affinity = {n * n * 4 / 2 ** 20:.0f} MiB)")
    forms = [("direct", 0)] + [("chunked", int(c))
                               for c in args.chunks.split(",")]
    for attention, chunk in forms:
      label = attention + (f" (chunk {chunk})" if chunk else "")
      fwd = temp_bytes(attention, chunk or 1024, hw, grad=False)
      both = temp_bytes(attention, chunk or 1024, hw, grad=True)
      print(f"  {label:22s} forward {fwd / 2 ** 20:9.1f}   "
            f"forward+backward {both / 2 ** 20:9.1f}", flush=True)


if __name__ == "__main__":
  main()
