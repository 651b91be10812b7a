"""Bad config values are refused before any data preparation or compile,
one line per problem naming the key, exit code 2 (issue 11, item 5)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mtdense_jax import config_check
from tests.conftest import REPO

CFG = str(REPO / "configs" / "synthetic_baseline.py") + ":runlocal"


def _cfg():
  return config_check.load_config_file(CFG)


def _set(cfg, dotted, value):
  *parents, leaf = dotted.split(".")
  node = cfg
  for p in parents:
    node = node[p]
  node[leaf] = value


@pytest.mark.parametrize("key,value,message", [
    ("train.ckpt_every", 0, "config.train.ckpt_every=0: must be an integer "
                            ">= 1."),
    ("train.batch_size", 0, "config.train.batch_size=0: must be an integer "
                            ">= 1."),
    ("train.steps", -3, "config.train.steps=-3: must be an integer >= 1."),
    ("optim.lr", -1e-3, "config.optim.lr=-0.001: must be a finite number "
                        "> 0."),
    ("optim.lr", float("nan"), "config.optim.lr=nan: must be a finite "
                               "number > 0."),
    ("optim.b2", 1.0, "config.optim.b2=1.0: must be in [0, 1)."),
    ("data.cat_max_ratio", 0.0, "config.data.cat_max_ratio=0.0: must be in "
                                "(0, 1]."),
    ("data.image_size", (30, 48), "config.data.image_size=(30, 48) is not "
     "divisible by the patch size 16 of config.model.variant='Ti/16'; use "
     "multiples of 16, e.g. (32, 48)."),
    ("model.variant", "XL/16", "config.model.variant='XL/16': unknown vit "
     "variant; one of Ti/16, S/16, B/16, L/16."),
    ("train.grad_accum", 3, "config.train.batch_size=8 is not divisible by "
                            "config.train.grad_accum=3."),
    ("model.dtype", "float64", "config.model.dtype='float64'; expected one "
                               "of"),
    ("sharding.strategy", "zero3", "config.sharding.strategy='zero3'; "
                                   "expected one of"),
    ("optim.schedule", "step", "config.optim: Unknown schedule 'step'"),
    ("tasks", (), "config.tasks is empty"),
])
def test_bad_value_names_the_key(key, value, message):
  cfg = _cfg()
  _set(cfg, key, value)
  with pytest.raises(config_check.ConfigError) as e:
    config_check.validate(cfg)
  assert any(line.startswith(message) for line in e.value.lines()), \
      e.value.lines()


def test_boundary_matcher_checked_against_the_evaluator():
  cfg = _cfg()
  cfg.eval.boundary.enabled = True
  cfg.eval.boundary.matcher = "bsds_csa"
  config_check.validate(cfg)
  cfg.eval.boundary.matcher = "hungarian"
  with pytest.raises(config_check.ConfigError) as e:
    config_check.validate(cfg)
  assert any(line.startswith("config.eval.boundary.matcher='hungarian': "
                             "expected one of ['bsds', 'bsds_csa'")
             for line in e.value.lines()), e.value.lines()


def test_every_shipped_config_is_valid():
  for path in sorted((REPO / "configs").glob("*.py")):
    config_check.validate(config_check.load_config_file(str(path)))


def _launch(tmp_path, *overrides):
  data_dir = tmp_path / "tfds"
  r = subprocess.run(
      [sys.executable, str(REPO / "launch.py"), "--config", CFG,
       "--workdir", str(tmp_path / "w"), f"--config.data.data_dir={data_dir}",
       *overrides], capture_output=True, text=True, timeout=120, cwd=REPO)
  # Refused before the dataset is prepared or anything is written.
  assert not data_dir.exists() and not (tmp_path / "w").exists()
  return r


def test_cli_reports_every_bad_value_with_exit_2(tmp_path):
  r = _launch(tmp_path, "--config.train.ckpt_every=0",
              "--config.train.batch_size=0", "--config.optim.lr=-1.0",
              "--config.data.image_size=(30, 48)")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
      "Config error: config.train.batch_size=0: must be an integer >= 1.",
      "Config error: config.train.ckpt_every=0: must be an integer >= 1.",
      "Config error: config.optim.lr=-1.0: must be a finite number > 0.",
      "Config error: config.data.image_size=(30, 48) is not divisible by the "
      "patch size 16 of config.model.variant='Ti/16'; use multiples of 16, "
      "e.g. (32, 48).",
  ], r.stderr


@pytest.mark.parametrize("override,message", [
    ("--config.model.decoder=invtp", "Config error: config.model.decoder: "
                                     "unknown decoder 'invtp'"),
    ("--config.eval.protocol=nyud", "Config error: config.eval.protocol="
                                    "'nyud'; expected one of 'invpt', 'mtl', "
                                    "'mtan'."),
    ("--config.model.variant=XL/16", "Config error: config.model.variant="
                                     "'XL/16': unknown vit variant"),
])
def test_cli_unknown_names_exit_2_without_traceback(tmp_path, override,
                                                    message):
  r = _launch(tmp_path, override)
  assert r.returncode == 2
  assert r.stderr.strip().startswith(message), r.stderr
  assert "Traceback" not in r.stderr
