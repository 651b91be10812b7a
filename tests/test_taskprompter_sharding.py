"""One TaskPrompter train step on 8 simulated CPU devices equals the
one-device step (tests/conftest.py sets 8 devices).

configs/synthetic_taskprompter.py:runlocal with two of its tasks (task
prompts through every ViT block, the prompt-to-feature interactions and
BatchNorm conv heads), one
step of the same batch: data-parallel (replicated params, the batch split
8 ways) and FSDP (kernels split over 'data') against one device, with the
tolerances and comparison of tests/test_sharding.py (loss, gradient norm,
updated parameters, Adam moments), except for one floor: the conv biases
that feed a BatchNorm have a true gradient of 0 (the BatchNorm removes any
bias), so their Adam moments are rounding noise (measured 6e-12 against a
largest first moment of 1.1e-2) that no relative tolerance can compare;
each moment leaf is held to OPT_RTOL of its own scale, or NOISE_FLOOR of
the largest entry of that moment when that is larger; and a parameter
whose gradient is at that noise level may move by anything up to the
learning rate in the first Adam update (lr * g / (|g| + eps)), others by
PARAM_ATOL as in test_sharding.
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from mtdense_jax import config_check
from mtdense_jax.train import sharding as shd
from tests.conftest import REPO
from tests.test_sharding import LR, OPT_RTOL, PARAM_ATOL, RTOL, _host, one_step

# Three train-step compiles of ~35 s on one core each: 107 s CPU measured
# with a cold compile cache, so the whole file runs under -m slow.
pytestmark = pytest.mark.slow

CONFIG = str(REPO / "configs" / "synthetic_taskprompter.py") + ":runlocal"
# Absolute floor of a moment's comparison, as a fraction of that moment's
# largest entry: the rounding noise of a zero gradient summed in another
# order over 8 devices measured 5e-10 of it.
NOISE_FLOOR = 1e-6
MAX_NOISY = 0.01   # at most this fraction of parameters has such a gradient
# Two of the four tasks: the same prompts, interactions and BatchNorm heads
# at half the compile time (the train step's compile dominates this file).
TASKS = ("semseg", "normals")
CASES = {
    "replicate": {},
    "fsdp": {"sharding.strategy": "fsdp", "sharding.min_size": 1024},
}


def _config(data_dir, **overrides):
  cfg = config_check.load_config_file(CONFIG)
  cfg.data.data_dir = str(data_dir)
  cfg.tasks = TASKS
  cfg.optim.warmup_steps = 0      # A non-zero first update to compare.
  assert cfg.optim.lr == LR, "LR is the first update's largest step"
  # Per-parameter optimizer state on both sides (a one-device CPU mesh
  # would flatten it, train/optim.py), so the states compare leaf by leaf.
  cfg.optim.flatten = "off"
  for key, value in overrides.items():
    node, _, leaf = key.rpartition(".")
    cfg[node][leaf] = value
  return cfg


def _moment(name: str) -> str | None:
  """'opt/.../mu' for a leaf of Adam's first moment (likewise 'nu')."""
  parts = name.split("/")
  for i, part in enumerate(parts):
    if part in ("mu", "nu"):
      return "/".join(parts[:i + 1])
  return None


def _assert_same_step(got, want, what):
  """tests/test_sharding.assert_same_step with NOISE_FLOOR (module doc)."""
  (m_got, s_got), (m_want, s_want) = got, want
  for k in m_want:
    np.testing.assert_allclose(m_got[k], m_want[k], rtol=RTOL, atol=1e-7,
                               err_msg=f"{what}: {k}")
  flat_got = jax.tree_util.tree_leaves_with_path(s_got)
  flat_want = jax.tree.leaves(s_want)
  assert len(flat_got) == len(flat_want)
  names = [shd.path_str(path) for path, _ in flat_got]
  largest, first_moment = {}, {}
  for name, y in zip(names, flat_want):
    moment = _moment(name)
    if moment:   # per moment: its largest entry over the whole model
      largest[moment] = max(largest.get(moment, 0.0),
                            float(np.max(np.abs(y), initial=0.0)))
      if moment.endswith("/mu"):   # .../mu/<root>/<param path>
        first_moment[name[len(moment) + 1:].split("/", 1)[1]] = y
  assert len(largest) == 2, sorted(largest)   # Adam's mu and nu.
  mu_floor = NOISE_FLOOR * max(v for k, v in largest.items()
                               if k.endswith("/mu"))
  noisy = total = 0
  for name, (_, x), y in zip(names, flat_got, flat_want):
    scale = float(np.max(np.abs(y), initial=0.0))
    if name.startswith("params/"):
      # Adam's first update lr * g / (|g| + eps) of a gradient at noise
      # level has any size up to lr, either sign.
      mu = first_moment[name[len("params/"):]]
      atol = np.where(np.abs(mu) > mu_floor, PARAM_ATOL, 2 * LR)
      noisy, total = noisy + int(np.sum(atol > PARAM_ATOL)), total + x.size
      bad = np.abs(x - y) > atol + RTOL * np.abs(y)
      assert not bad.any(), (
          f"{what}: {name}: {bad.sum()} of {bad.size} differ, max "
          f"{np.max(np.abs(x - y)):.3g} (PARAM_ATOL {PARAM_ATOL})")
      continue
    if _moment(name):
      rtol = OPT_RTOL
      atol = max(rtol * scale, NOISE_FLOOR * largest[_moment(name)])
    else:
      rtol = OPT_RTOL if name.startswith("opt/") else RTOL
      atol = rtol * scale + 1e-12
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol,
                               err_msg=f"{what}: {name}")
  # The exemption covers the BatchNorm-fed biases, not the model.
  assert noisy <= MAX_NOISY * total, (noisy, total)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def reference(data_dir):
  metrics, state, _ = one_step(_config(data_dir), jax.devices()[:1])
  return metrics, _host(state)


@pytest.mark.parametrize("case", sorted(CASES))
def test_eight_devices_match_one(case, data_dir, reference):
  assert len(jax.devices()) == 8, "conftest sets 8 fake CPU devices"
  cfg = _config(data_dir, **CASES[case])
  assert cfg.train.batch_size % 8 == 0, "one example or more per device"
  metrics, state, _ = one_step(cfg, jax.devices())
  _assert_same_step((metrics, _host(state)), reference, case)
  if case == "fsdp":  # The split really happened: a ViT MLP kernel.
    fc1 = state["params"]["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"]
    assert fc1.sharding.spec == P(None, "data")
    assert fc1.addressable_shards[0].data.shape[1] == fc1.shape[1] // 8
