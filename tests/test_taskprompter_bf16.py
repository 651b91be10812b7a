"""TaskPrompter with bfloat16 compute (float32 params) against the float32
golden.

The golden cases of test_taskprompter_parity (reference PyTorch, float32)
run through the same converted weights with the model built with
``config.model.dtype="bfloat16"``. bf16 keeps 8 significant bits (unit
roundoff 2^-8 = 0.4%); the error compounds through the ViT blocks and, in
TaskPrompter, through the raw (unscaled) attention scores that the decoder
uses as feature multipliers, so the bound is much looser than the float32
one (1e-4). Measured on both shared cases (CPU, XLA), per output map:
max |err| / max |ref| 0.016-0.032 (worst: NYUD edge, PASCAL sal) and
mean |err| / mean |ref| 0.013-0.023 (worst: PASCAL sal); max abs error
0.51 on outputs of magnitude 7-28. Asserted, about 2x the worst measured:
max |err| <= RTOL_OF_MAX * max |ref| and mean |err| <= MEAN_RTOL *
mean |ref|, per output, and an error above float32 noise (1e-4 of max
|ref|), so a dtype that is silently dropped fails too. Params stay float32;
the heads return float32 maps.
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax.models import multitask
from mtdense_jax.models.decoders import taskprompter
from tests import taskprompter_testing as tpt
from tests.test_taskprompter_parity import CASES

RTOL_OF_MAX = 0.06   # max |bf16 - golden| / max |golden|, per output.
F32_NOISE = 1e-4     # float32 gives ~1e-6 here; bf16 must show above it.
MEAN_RTOL = 0.06     # mean |bf16 - golden| / mean |golden|, per output.


def _bf16_model(npz: dict, meta: dict) -> multitask.MultiTaskModel:
  """The golden case's model with bf16 compute, filled by the converter."""
  model_cfg = dict(tpt.model_config(meta), dtype="bfloat16")
  model = nnx.eval_shape(lambda: multitask.build_model(
      model_cfg, task_outputs=tpt.task_outputs(meta),
      img_size=tuple(meta["config"]["image_size_hw"]), rngs=nnx.Rngs(0)))
  nnx.update(model, taskprompter.from_torch(tpt.state_dict(npz), model))
  model.eval()
  return model


@pytest.fixture(scope="module", params=CASES)
def bf16_case(request, golden):
  """One jitted bf16 eval forward per golden case."""
  npz, meta = golden(request.param)
  model = _bf16_model(npz, meta)
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


def test_outputs_match_float32_golden(bf16_case):
  preds = bf16_case["out"]["final"]
  report = []
  for t in bf16_case["meta"]["config"]["tasks"]:
    assert preds[t].dtype == np.float32  # Heads return float32 maps.
    want = bf16_case["npz"][f"output/{t}"]
    got = preds[t].transpose(0, 3, 1, 2)
    assert got.shape == want.shape, t
    max_rel, mean_rel = _errors(got, want)
    report.append(f"{t}: max/max|ref| {max_rel:.4f}, mean/mean|ref| "
                  f"{mean_rel:.4f}, max abs {np.abs(got - want).max():.4f}")
    assert max_rel <= RTOL_OF_MAX and mean_rel <= MEAN_RTOL, (
        f"{bf16_case['name']} {t}: max |err| / max |ref| = {max_rel:.4f} "
        f"(tol {RTOL_OF_MAX}), mean |err| / mean |ref| = {mean_rel:.4f} "
        f"(tol {MEAN_RTOL})")
    assert max_rel > F32_NOISE, f"{t}: no bf16 rounding at all ({max_rel})"
  print(f"{bf16_case['name']}:\n  " + "\n  ".join(report))
