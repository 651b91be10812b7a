"""Checkpoint failures end a run promptly with one line naming path, step and
cause; a corrupt newest step falls back; another model's checkpoint gets a
short diff; a poisoned state is never committed; SIGTERM checkpoints and
exits 0 (issue 11). Most cases run launch.py as a user would, with a bounded
timeout so that a hang fails the test instead of stalling CI."""

from __future__ import annotations

import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax import config_check
from mtdense_jax.data import pipeline
from mtdense_jax.train import checkpointing as ckpt
from mtdense_jax.train import loop
from mtdense_jax.train import state as state_lib
from tests import train_testing
from tests.conftest import REPO

CFG = str(REPO / "configs" / "synthetic_baseline.py") + ":runlocal"
TIMEOUT = 240   # a hang (the old failure mode) fails here, not in CI


def _args(workdir, data_dir, *overrides):
  return [sys.executable, str(REPO / "launch.py"), "--config", CFG,
          "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
          *overrides]


def launch(workdir, data_dir, *overrides, **kw):
  return subprocess.run(_args(workdir, data_dir, *overrides),
                        capture_output=True, text=True, timeout=TIMEOUT,
                        cwd=REPO, **kw)


def _last_line(text: str) -> str:
  return text.strip().splitlines()[-1]


def _config(data_dir):
  cfg = config_check.load_config_file(CFG)
  cfg.data.data_dir = str(data_dir)
  return cfg


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  """A finished 4-step CLI run with checkpoints at steps 2 and 4."""
  workdir = tmp_path_factory.mktemp("trained")
  r = launch(workdir, data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  assert ckpt.committed_steps(workdir / "checkpoints") == [2, 4]
  return workdir


def _copy(trained, tmp_path) -> pathlib.Path:
  return pathlib.Path(shutil.copytree(trained, tmp_path / "run"))


# 1. Save failures -----------------------------------------------------------


def test_uncreatable_checkpoints_dir_fails_fast_naming_it(data_dir, tmp_path):
  (tmp_path / "checkpoints").write_text("a file where the dir should be")
  r = launch(tmp_path, data_dir)
  assert r.returncode == 1
  assert _last_line(r.stderr) == (
      f"Error: Cannot write checkpoints to {tmp_path / 'checkpoints'}: it "
      "exists and is not a directory. Free space or fix the permissions, or "
      "pass another --workdir.")
  assert "Traceback" not in r.stderr


def _limit_file_size():
  # A 50 KB file-size limit: the small files of a run (logs, metrics) are
  # written, a checkpoint's array files fail with EFBIG as on a full disk.
  resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))


def _private_compile_cache(tmp_path) -> dict[str, str]:
  """Env for a size-limited run: a compile cache of hard links to the
  shared entries (jax never rewrites an existing entry), so the run reuses
  them but cannot leave a truncated new entry in the shared cache."""
  shared = pathlib.Path(jax.config.jax_compilation_cache_dir)
  private = tmp_path / "jit_cache"
  private.mkdir()
  for entry in shared.glob("*") if shared.is_dir() else ():
    try:
      os.link(entry, private / entry.name)
    except OSError:
      break   # another filesystem: an empty cache is slower, still correct
  return {**os.environ, "MTDENSE_JAX_CACHE": str(private)}


def test_disk_full_mid_run_ends_with_one_line_and_keeps_checkpoints(
    trained, data_dir, tmp_path):
  run = _copy(trained, tmp_path)
  r = launch(run, data_dir, "--config.train.steps=6",
             "--config.optim.total_steps=6", preexec_fn=_limit_file_size,
             env=_private_compile_cache(tmp_path))
  assert r.returncode == 1
  last = _last_line(r.stderr)
  assert last.startswith(f"Error: Checkpoint save failed at step 6 in "
                         f"{run / 'checkpoints'}: File too large"), last
  assert last.endswith("earlier checkpoints are intact (latest: step 4).")
  assert "Event loop is closed" not in r.stderr
  assert len(r.stderr.splitlines()) < 30, r.stderr   # was ~1,700 lines
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4"]
  params, step = train_testing.restored_params(run / "checkpoints",
                                               _config(data_dir))
  assert step == 4 and all(np.isfinite(x).all()
                           for x in jax.tree.leaves(params))


def _immutable(path) -> bool:
  """chattr +i: unwritable even for root (absent on some filesystems)."""
  return subprocess.run(["chattr", "+i", str(path)],
                        capture_output=True).returncode == 0


def test_background_save_into_unwritable_dir_raises_promptly(tmp_path,
                                                             monkeypatch):
  """Past the up-front probe (the dir turns read-only mid-run), orbax's own
  error surfaces at once instead of a 20-minute wait for a signal."""
  mngr = ckpt.manager(tmp_path, save_every=1)
  saver = ckpt.Saver(mngr)
  state = {"params": {"w": jnp.ones(3)}, "batch_stats": {},
           "step": jnp.array(1)}
  saver.save(1, state)
  saver.wait()
  if not _immutable(tmp_path):
    pytest.skip("chattr +i is not available here")
  monkeypatch.setattr(ckpt, "check_writable", lambda *a, **k: None)
  try:
    with pytest.raises(ckpt.CheckpointError,
                       match=r"save failed at step 2 in .*: Operation not "
                             r"permitted.*latest: step 1"):
      saver.save(2, state)
      saver.wait()
  finally:
    subprocess.run(["chattr", "-i", str(tmp_path)], check=True)
  assert ckpt.committed_steps(tmp_path) == [1]


# 2. Corrupt newest checkpoint -----------------------------------------------


def _largest_params_file(step_dir: pathlib.Path) -> pathlib.Path:
  files = [p for p in (step_dir / "params").rglob("*")
           if p.is_file() and p.parent.name == "d"]
  return max(files, key=lambda p: p.stat().st_size)


def test_resume_skips_truncated_newest_step(trained, data_dir, tmp_path):
  run = _copy(trained, tmp_path)
  victim = _largest_params_file(run / "checkpoints" / "4")
  with open(victim, "r+b") as f:
    f.truncate(1000)
  r = launch(run, data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  assert (f"Skipping corrupt checkpoint step 4: {run / 'checkpoints' / '4'}"
          f"/params/: array params.") in r.stdout
  assert f"Resumed from {run / 'checkpoints'} step 2" in r.stdout
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
      "2", "4", "4.corrupt"]
  # Retraining steps 3-4 from step 2 reproduces the original step 4.
  cfg = _config(data_dir)
  a, _ = train_testing.restored_params(trained / "checkpoints", cfg)
  b, _ = train_testing.restored_params(run / "checkpoints", cfg)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def experiment(data_dir):
  cfg = _config(data_dir)
  exp = loop.setup(cfg)
  _, state, shardings = state_lib.init_state(
      exp.factory, exp.tx, exp.weighting, list(exp.tasks), exp.mesh,
      cfg.get("sharding"))
  return cfg, exp, state, shardings


@pytest.mark.parametrize("member", ["train/_METADATA",
                                    "data/process_0-of-1.json"])
def test_empty_json_member_is_named_and_skipped(trained, experiment, tmp_path,
                                                member):
  cfg, exp, state, shardings = experiment
  run = _copy(trained, tmp_path)
  (run / "checkpoints" / "4" / member).write_text("")
  it = pipeline.make_train_iter(cfg.data, list(exp.tasks),
                                global_batch_size=cfg.train.batch_size,
                                seed=cfg.seed)
  logged = []
  mngr = ckpt.manager(run / "checkpoints")
  _, step = ckpt.restore_latest(mngr, state, shardings, it, log=logged.append)
  assert step == 2
  root = run / "checkpoints"
  assert logged == [f"Skipping corrupt checkpoint step 4: {root / '4' / member}"
                    f" is empty; moved to {root / '4.corrupt'}."]
  assert mngr.latest_step() == 2
  mngr.close()


def test_no_good_step_is_an_error_listing_each(trained, experiment,
                                               tmp_path):
  _, _, state, shardings = experiment
  run = _copy(trained, tmp_path)
  for step in (2, 4):
    (run / "checkpoints" / str(step) / "train" / "_METADATA").write_text("")
  mngr = ckpt.manager(run / "checkpoints")
  with pytest.raises(ckpt.CheckpointError,
                     match=r"No checkpoint in .* restores completely: step 4 "
                           r"\(.*/4/train/_METADATA is empty\); step 2 \("
                           r".*/2/train/_METADATA is empty\)"):
    ckpt.restore_latest(mngr, state, shardings, log=lambda _: None)
  mngr.close()


def test_eval_of_a_corrupt_step_names_the_file(trained, experiment,
                                               tmp_path):
  cfg, _, _, _ = experiment
  run = _copy(trained, tmp_path)
  bad = run / "checkpoints" / "4" / "params" / "_METADATA"
  bad.write_text("{")
  with pytest.raises(ckpt.CheckpointError,
                     match=f"step 4 cannot be restored: {bad} is not valid "
                           "JSON"):
    train_testing.restored_params(run / "checkpoints", cfg, step=4)
  # Without --step, evaluation falls back to the newest good step.
  _, step = train_testing.restored_params(run / "checkpoints", cfg)
  assert step == 2


def test_a_failure_that_is_not_a_damaged_file_moves_nothing(
    trained, experiment, tmp_path, monkeypatch):
  """Only damaged files trigger the fallback: any other restore error (a
  device or memory problem) is reported as is, and no step is set aside."""
  _, _, state, shardings = experiment
  run = _copy(trained, tmp_path)

  def failing(*args, **kwargs):
    raise RuntimeError("simulated device failure")

  monkeypatch.setattr(ckpt, "restore", failing)
  mngr = ckpt.manager(run / "checkpoints")
  with pytest.raises(ckpt.CheckpointError,
                     match=r"step 4 in .* cannot be restored: RuntimeError: "
                           r"simulated device failure"):
    ckpt.restore_latest(mngr, state, shardings)
  mngr.close()
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4"]


# 3. A checkpoint of another config ------------------------------------------


def test_mismatched_config_gets_a_short_report_and_keeps_files(
    trained, data_dir, tmp_path):
  run = _copy(trained, tmp_path)
  before = {n: (run / n).read_text() for n in ("config.json",
                                              "dataset_meta.json")}
  r = launch(run, data_dir, "--config.model.decoder_kw.dim=32")
  assert r.returncode == 1
  assert (f"Error: Checkpoint step 4 in {run / 'checkpoints'} was written by "
          "a different model or config") in r.stderr
  assert ("shape differs: params/decoder/fuse/bias: checkpoint (16,), model "
          "(32,)") in r.stderr
  assert "config keys that differ: model.decoder_kw.dim: 16 -> 32" in r.stderr
  assert len(r.stderr) < 3000 and "Traceback" not in r.stderr
  # The failed attempt changed nothing a good run's predict relies on.
  assert {n: (run / n).read_text() for n in before} == before
  assert ckpt.committed_steps(run / "checkpoints") == [2, 4]


def test_eval_of_another_models_checkpoint_reports_shapes(trained, data_dir):
  cfg = _config(data_dir)
  cfg.model.decoder_kw.dim = 32
  with pytest.raises(ckpt.CheckpointError) as e:
    train_testing.restored_params(trained / "checkpoints", cfg)
  assert ("shape differs: params/decoder/fuse/bias: checkpoint (16,), model "
          "(32,)") in str(e.value)
  assert len(str(e.value).splitlines()) <= 12


# 4. Poisoned states ---------------------------------------------------------


def test_huge_lr_from_scratch_commits_no_poisoned_checkpoint(data_dir,
                                                             tmp_path):
  r = launch(tmp_path, data_dir, "--config.optim.lr=1e30")
  assert r.returncode == 1
  last = _last_line(r.stderr)
  assert last.startswith("Error: Non-finite or overflowing (|x| > ~1e19) "
                         "parameters or optimizer state after step 2 ("), last
  assert "no checkpoint was saved" in last
  assert ckpt.committed_steps(tmp_path / "checkpoints") == []
  assert not list((tmp_path / "checkpoints").glob("*tmp*"))


def test_assert_finite_names_the_leaf():
  state = {"params": {"a": jnp.ones(2), "b": jnp.array([1.0, jnp.inf])},
           "opt": {"nu": jnp.full(2, 1e30)}, "step": jnp.array(3)}
  with pytest.raises(FloatingPointError,
                     match=r"after step 3 \(opt/nu, params/b\)"):
    ckpt.assert_finite(state, 3)
  ckpt.assert_finite({"params": {"a": jnp.full(2, 1e15)}}, 1)


def test_nan_stop_with_save_in_flight_exits_cleanly(data_dir, tmp_path):
  """The NaN stop right after an async save was launched: the save
  completes, no '...-tmp' dir, no 'cannot schedule new futures'."""
  script = textwrap.dedent(f"""
      import sys
      from mtdense_jax import config_check, runtime
      from mtdense_jax.train import loop
      runtime.initialize()   # the persistent compile cache, as launch.py
      cfg = config_check.load_config_file({CFG!r})
      cfg.data.data_dir = {str(data_dir)!r}
      def poisoned_eval(*args, **kwargs):   # right after the step-2 save
        raise FloatingPointError("simulated non-finite loss at step 2")
      loop.evaluate = poisoned_eval
      try:
        loop.train_and_evaluate(cfg, {str(tmp_path)!r})
      except FloatingPointError as e:
        sys.exit(f"Error: {{e}}")
      """)
  r = subprocess.run([sys.executable, "-c", script], capture_output=True,
                     text=True, timeout=TIMEOUT, cwd=REPO)
  assert r.returncode == 1
  assert _last_line(r.stderr) == (
      "Error: simulated non-finite loss at step 2")
  assert "cannot schedule new futures" not in r.stderr
  assert ckpt.committed_steps(tmp_path / "checkpoints") == [2]
  assert not list((tmp_path / "checkpoints").glob("*tmp*"))


# 7. Preemption ---------------------------------------------------------------


@pytest.mark.slow   # two CLI runs, ~30 s on 2 cores
def test_sigterm_checkpoints_exits_0_and_resume_is_exact(trained, data_dir,
                                                         tmp_path):
  args = _args(tmp_path, data_dir, "--config.train.log_every=1")
  p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, cwd=REPO)
  try:
    for line in p.stdout:   # progress lines: "step 1/4 | ..."
      if line.startswith("step 1/"):
        p.send_signal(signal.SIGTERM)
        break
    out, err = p.communicate(timeout=TIMEOUT)
  finally:
    p.kill()
  assert p.returncode == 0, err[-3000:]
  assert "SIGTERM received: saving a checkpoint after this step" in err
  stopped = ckpt.committed_steps(tmp_path / "checkpoints")
  assert len(stopped) == 1 and stopped[0] < 4, out
  assert (f"Stopped by SIGTERM at step {stopped[0]}; checkpoint saved in "
          f"{tmp_path / 'checkpoints'}. Run the same command again to "
          "resume.") in out
  r = launch(tmp_path, data_dir, "--config.train.log_every=1")
  assert r.returncode == 0, r.stderr[-3000:]
  assert (f"Resumed from {tmp_path / 'checkpoints'} step {stopped[0]}"
          in r.stdout)
  cfg = _config(data_dir)
  a, step_a = train_testing.restored_params(trained / "checkpoints", cfg)
  b, step_b = train_testing.restored_params(tmp_path / "checkpoints", cfg)
  assert step_a == step_b == 4
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_second_sigint_aborts():
  """SIGINT once asks for a checkpoint; twice aborts at once."""
  from mtdense_jax import runtime  # pylint: disable=g-import-not-at-top
  seen, before = [], signal.getsignal(signal.SIGINT)

  @runtime.stop_on_signals
  def run():
    signal.raise_signal(signal.SIGINT)
    seen.append(runtime.stop_requested())
    signal.raise_signal(signal.SIGINT)
    seen.append("not reached")

  with pytest.raises(KeyboardInterrupt):
    run()
  assert seen == ["SIGINT"]
  assert runtime.stop_requested() is None
  assert signal.getsignal(signal.SIGINT) is before
