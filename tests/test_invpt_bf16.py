"""InvPT with bfloat16 compute (float32 params) against the float32 golden.

The golden cases of test_invpt_parity (reference PyTorch, float32) run
through the same converted weights with the model built with
``dtype=bfloat16``. bf16 keeps 8 significant bits (unit roundoff 2^-8 =
0.4%), and the error compounds through the ViT and the three
UP-Transformer stages, so the bound is much looser than the float32 one
(2e-5). Measured on both shared cases (CPU, XLA), per output map:
max |err| / max |ref| 0.010-0.029 (final; worst NYUD edge) and
0.008-0.020 (inter preds); mean |err| / mean |ref| 0.005-0.029 (worst NYUD
edge); max abs error 0.078 (PASCAL normals logits). Asserted, about 2x the
worst measured: max |err| <= RTOL_OF_MAX * max |ref| and
mean |err| <= MEAN_RTOL * mean |ref|. Params stay float32; the heads
return float32 maps.
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import invpt_testing
from tests.test_invpt_parity import CASES

RTOL_OF_MAX = 0.06   # max |bf16 - golden| / max |golden|, per output.
MEAN_RTOL = 0.06     # mean |bf16 - golden| / mean |golden|, per output.


@pytest.fixture(scope="module", params=CASES)
def bf16_case(request, golden):
  """One jitted bf16 eval forward per golden case."""
  npz, meta = golden(request.param)
  model = invpt_testing.converted_model(npz, meta, dtype=jnp.bfloat16)
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
  out = forward(state, jnp.asarray(npz["input"].transpose(0, 2, 3, 1)))
  return dict(name=request.param, npz=npz, meta=meta, model=model,
              out=jax.tree.map(np.asarray, out))


def _errors(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
  err = np.abs(actual.astype(np.float64) - expected)
  return (err.max() / np.abs(expected).max(),
          err.mean() / np.abs(expected).mean())


def test_params_stay_float32(bf16_case):
  dtypes = {x.dtype for x in jax.tree.leaves(
      nnx.state(bf16_case["model"], nnx.Param))}
  assert dtypes == {np.dtype(np.float32)}


@pytest.mark.parametrize("kind", ["final", "inter_preds"])
def test_outputs_match_float32_golden(bf16_case, kind):
  out = bf16_case["out"]
  preds = out["final"] if kind == "final" else out["aux"]["inter_preds"]
  prefix = "output" if kind == "final" else "output/inter_preds"
  report = []
  for t in bf16_case["meta"]["config"]["tasks"]:
    assert preds[t].dtype == np.float32  # Heads return float32 maps.
    want = bf16_case["npz"][f"{prefix}/{t}"]
    got = preds[t].transpose(0, 3, 1, 2)
    max_rel, mean_rel = _errors(got, want)
    report.append(f"{t}: max/max|ref| {max_rel:.4f}, mean/mean|ref| "
                  f"{mean_rel:.4f}, max abs {np.abs(got - want).max():.4f}")
    assert max_rel <= RTOL_OF_MAX and mean_rel <= MEAN_RTOL, (
        f"{bf16_case['name']} {kind}/{t}: max |err| / max |ref| = "
        f"{max_rel:.4f} (tol {RTOL_OF_MAX}), mean |err| / mean |ref| = "
        f"{mean_rel:.4f} (tol {MEAN_RTOL})")
  print(f"{bf16_case['name']} {kind}:\n  " + "\n  ".join(report))
