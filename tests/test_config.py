"""Bad input gets a clear error that names the problem."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mtdense_jax import config_check
from tests.conftest import REPO

CFG = str(REPO / "configs" / "synthetic_baseline.py")


def _launch(*args):
  return subprocess.run(
      [sys.executable, str(REPO / "launch.py"), "--workdir", "/tmp/unused",
       *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_unknown_override_key_names_it():
  r = _launch("--config", CFG, "--config.train.stpes=3")
  assert r.returncode == 2
  assert "train.stpes" in r.stderr and "did you mean 'steps'" in r.stderr


def test_unknown_config_arg_names_it():
  r = _launch("--config", CFG + ":varaint=S/16")
  assert r.returncode == 2 and "varaint" in r.stderr


def test_unknown_key_in_config_file():
  cfg = config_check.load_config_file(CFG)
  cfg.unlock()
  cfg.train.stpes = 3
  with pytest.raises(config_check.ConfigError, match=r"config\.train\.stpes"):
    config_check.validate(cfg)


@pytest.mark.parametrize("field,value,kind", [
    ("tasks", ("semseg", "dpeth"), "task"),
    ("model.decoder", "invtp", "decoder"),
    ("model.encoder", "vitt", "encoder"),
    ("weighting.name", "lsp", "weighting"),
    ("data.name", "nyud", "dataset"),
])
def test_unknown_plugin_names(field, value, kind):
  cfg = config_check.load_config_file(CFG)
  node = cfg
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(config_check.ConfigError, match=f"unknown {kind}"):
    config_check.validate(cfg)


def test_valid_config_passes():
  config_check.validate(config_check.load_config_file(CFG))
  config_check.validate(config_check.load_config_file(CFG + ":runlocal"))


def test_missing_dataset_says_which_archive_goes_where(tmp_path):
  from mtdense_jax.train import loop  # pylint: disable=g-import-not-at-top
  cfg = config_check.load_config_file(CFG)
  cfg.data.name, cfg.data.config = "nyud_v2", "all"
  cfg.data.data_dir = str(tmp_path / "tfds")
  cfg.data.manual_dir = str(tmp_path / "manual")
  with pytest.raises(Exception, match="NYUDv2.tar.gz") as e:
    loop.setup(cfg)
  assert str(tmp_path / "manual") in str(e.value)
