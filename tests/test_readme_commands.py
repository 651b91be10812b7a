"""Every command in README.md points at something that exists and starts:
its script or module exists and `--help` works, its config files load, its
requirement files exist. The main job and the test command themselves are
run by .ci/run (which this test also checks)."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys

import pytest

from mtdense_jax import config_check
from tests.conftest import REPO

README = REPO / "README.md"
# Placeholders and multi-host recipes that cannot run here.
_SKIP_PREFIXES = ("gcloud", "srun", "for ", "JAX_COORDINATOR_ADDRESS")


def _blocks() -> list[str]:
  text = README.read_text()
  cmds = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    block = block.replace("\\\n", " ")
    for line in block.splitlines():
      line = line.split(" #")[0].strip()
      if line and not line.startswith(("#",) + _SKIP_PREFIXES):
        cmds.extend(c.strip() for c in line.split("&&"))
  for inline in re.findall(r"`((?:python|pip|bash) [^`]+)`", text):
    cmds.append(inline.strip())
  return [c for c in cmds if not c.startswith(_SKIP_PREFIXES)]


def _entry(cmd: str) -> tuple[str, str] | None:
  """('script', path) / ('module', name) of a python command."""
  args = cmd.split()
  if args[0] != "python":
    return None
  if args[1] == "-m":
    return ("module", args[2])
  return ("script", args[1])


COMMANDS = _blocks()
ENTRIES = sorted({e for e in map(_entry, COMMANDS) if e})


def test_readme_has_the_two_commands():
  main_job = "python launch.py --config configs/synthetic_invpt.py"
  assert any(c.startswith(main_job) for c in COMMANDS)
  assert "python -m pytest -q -n 2" in COMMANDS


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.startswith("pip")])
def test_pip_commands_name_existing_files(cmd):
  args = cmd.split()
  if "-r" in args:
    assert (REPO / args[args.index("-r") + 1]).is_file(), cmd
  else:
    assert args[-1] == "." and (REPO / "pyproject.toml").is_file(), cmd


def _config_specs():
  specs = set()
  for cmd in COMMANDS:
    for spec in re.findall(r"--config[ =](configs/\S+)", cmd):
      spec = spec.rstrip("`")
      if "|" not in spec and "..." not in spec and "[" not in spec:
        specs.add(spec)
  return sorted(specs)


@pytest.mark.parametrize("spec", _config_specs())
def test_config_specs_load(spec):
  cfg = config_check.load_config_file(str(REPO / spec))
  config_check.validate(cfg)


@functools.cache
def _help(kind: str, target: str) -> subprocess.CompletedProcess:
  argv = ([sys.executable, "-m", target] if kind == "module" else
          [sys.executable, str(REPO / target)])
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  return subprocess.run(argv + ["--help"], capture_output=True, text=True,
                        timeout=120, cwd=REPO, env=env)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e[1])
def test_entry_points_exist_and_help_works(entry):
  kind, target = entry
  if kind == "module":
    assert importlib.util.find_spec(target) is not None, target
  else:
    assert (REPO / target).is_file(), target
  out = _help(kind, target)
  assert "Traceback" not in out.stderr, out.stderr[-2000:]
  assert out.returncode == 0, (target, out.stdout[-500:], out.stderr[-500:])
  assert "--" in out.stdout  # it listed its flags


def test_ci_runs_the_main_job_from_requirements_alone():
  ci = (REPO / ".ci" / "run").read_text()
  first, _, second = ci.partition("-r requirements-test.txt")
  assert "-r requirements.txt" in first
  assert "launch.py --config configs/synthetic_invpt.py:runlocal" in first
  assert "python -m pytest -q -n 2" in second
