"""The paper configs train and evaluate from the real-dataset builders (fed
tiny fake archives in the public layouts), with only sizes shrunk."""

from __future__ import annotations

import numpy as np
import pytest

from mtdense_jax import config_check
from mtdense_jax.train import loop
from tests import fake_archives
from tests.conftest import REPO


@pytest.mark.parametrize("config,writer,hw", [
    ("nyud_invpt.py", fake_archives.write_nyud, (48, 100)),
    ("pascal_invpt.py", fake_archives.write_pascal, (50, 60)),
])
def test_paper_config_trains_on_builder(tmp_path, config, writer, hw):
  manual = tmp_path / "manual"
  kw = dict(train=("a1", "a2", "a3"), val=("b1", "b2"), hw=hw)
  if writer is fake_archives.write_pascal:
    kw.update(train=("2008_000001", "2008_000002", "2008_000004"),
              val=("2008_000003", "2008_000005"), voc=("2008_000001",))
  writer(manual, **kw)
  cfg = config_check.load_config_file(
      str(REPO / "configs" / config) + ":runlocal")
  cfg.data.data_dir = str(tmp_path / "tfds")
  cfg.data.manual_dir = str(manual)
  cfg.data.image_size = (64, 128)   # InvPT needs multiples of 64
  # The suite runs on 8 fake devices; the batch must split over them.
  cfg.train.batch_size = cfg.eval.batch_size = 8
  config_check.validate(cfg)
  metrics = loop.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert metrics and all(np.isfinite(v) for v in metrics.values())
  assert {f"{t}/{m}" for t in cfg.tasks
          for m in [next(iter(loop.setup(cfg).tasks[t].metric_directions))]
          } <= set(metrics)
