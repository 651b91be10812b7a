"""InvPT's weighted multi-task loss (with deep supervision) from the Tasks.

Golden: losses_multitask_{nyud,pascal} (prismformore/Multi-Task-Transformer
InvPT/losses/loss_schemes.py ``MultiTaskLoss``):
total = sum_t w_t * L_t(final_t) + sum_t w_t * L_t(inter_t).
Every task is built through the registry, as the trainer does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax import registry

# float32 losses vs PyTorch float32.
RTOL = 1e-5
NUM_CLASSES = {"nyud": {"semseg": 40}, "pascal": {"semseg": 21,
                                                   "human_parts": 7}}


def _nhwc(x):
  return np.transpose(x, (0, 2, 3, 1))


@pytest.mark.parametrize("db", ["nyud", "pascal"])
def test_multitask_loss_golden(golden, db):
  npz, meta = golden(f"losses_multitask_{db}")
  case = meta["cases"][db]
  spec, inputs, outputs = case["loss"], case["inputs"], case["outputs"]
  weights = spec["loss_weights"]
  total = 0.0
  for name in spec["tasks"]:
    task = registry.lookup("task", name).Task(
        num_classes=NUM_CLASSES[db].get(name))
    label = _nhwc(npz[inputs[f"label/{name}"]["key"]])
    # The goldens store labels as float32; the pipeline delivers them in
    # the task's label dtype (exact here: integers and 255).
    label = jnp.asarray(label.astype(task.label_dtype))
    loss = jax.jit(task.loss)
    for prefix, pred_key in (("", f"pred/{name}"),
                             ("inter_", f"pred/inter_preds/{name}")):
      got = loss(jnp.asarray(_nhwc(npz[inputs[pred_key]["key"]])), label)
      want = npz[outputs[prefix + name]["key"]]
      np.testing.assert_allclose(got, want, rtol=RTOL,
                                 err_msg=f"{db}/{prefix}{name}")
      total += weights[name] * got
  np.testing.assert_allclose(total, npz[outputs["total"]["key"]], rtol=RTOL,
                             err_msg=f"{db}/total")
