r"""Start-up time of a training launch: cold and warm compilation cache.

  python benchmarks/startup.py --config configs/synthetic_invpt.py:runlocal
  python benchmarks/startup.py --config configs/synthetic_invpt.py:runlocal \
      --runs cold,warm,warm --data_dir /tmp/tfds

Runs ``python launch.py --config CONFIG --workdir <fresh dir>`` once per
entry of ``--runs`` and prints, for each, the seconds from the launch to
each start-up milestone the run prints (dataset ready, parameter table,
first train step done, first progress line), then stops it (SIGTERM: the
loop checkpoints and exits). "cold" points MTDENSE_JAX_CACHE at a new empty
directory, "warm" at the one the previous runs filled, "off" switches the
persistent compilation cache off. The dataset is prepared before the first
timed run (the figures are with a warm dataset cache); every run starts a
new workdir, so none of them resumes.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

REPO = pathlib.Path(__file__).resolve().parents[1]
# (column, regex on a line of the launch's stdout); first match counts.
MILESTONES = (("dataset", r"^Dataset .* ready"),
              ("params", r"^Parameters:"),
              ("first_step", r"^First step \(compile included\)"),
              ("progress", r"^step \d+/\d+ \|"))


def prepare_data(config: str, data_dir: str) -> None:
  """Renders/prepares the config's dataset once (untimed)."""
  from mtdense_jax import config_check  # pylint: disable=g-import-not-at-top
  from mtdense_jax.data import sources  # pylint: disable=g-import-not-at-top
  cfg = config_check.load_config_file(config)
  if data_dir:
    cfg.data.data_dir = data_dir
  sources.prepare(sources.get_builder(cfg.data))


def time_launch(config: str, cache: str | None, data_dir: str,
                workdir: pathlib.Path, timeout: float) -> dict[str, float]:
  """Seconds from Popen to each milestone line of one launch."""
  env = dict(os.environ, PYTHONPATH=str(REPO),
             MTDENSE_JAX_CACHE=cache or "off")
  cmd = [sys.executable, str(REPO / "launch.py"), "--config", config,
         "--workdir", str(workdir)]
  if data_dir:
    cmd.append(f"--config.data.data_dir={data_dir}")
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=REPO)
  seen, tail = {}, []
  try:
    for line in proc.stdout:
      tail = (tail + [line])[-20:]
      for name, pattern in MILESTONES:
        if name not in seen and re.search(pattern, line):
          seen[name] = time.perf_counter() - start
      if "progress" in seen or time.perf_counter() - start > timeout:
        break
  finally:
    if proc.poll() is None:
      proc.send_signal(signal.SIGTERM)   # checkpoints, then exits 0
    proc.communicate(timeout=timeout)
  if "progress" not in seen:
    raise SystemExit(f"no progress line within {timeout:.0f} s; the "
                     "launch's last lines:\n" + "".join(tail))
  return seen


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="configs/synthetic_invpt.py:runlocal")
  p.add_argument("--runs", default="cold,warm",
                 help="comma list of cold, warm, off")
  p.add_argument("--data_dir", default="",
                 help="TFDS data dir (default: the config's)")
  p.add_argument("--timeout", type=float, default=900.0)
  args = p.parse_args(argv)
  runs = [r.strip() for r in args.runs.split(",") if r.strip()]
  if not runs or set(runs) - {"cold", "warm", "off"}:
    p.error(f"--runs {args.runs!r}: a comma list of cold, warm, off")
  prepare_data(args.config, args.data_dir)
  rows = []
  with tempfile.TemporaryDirectory(prefix="mtdense_startup_") as tmp:
    cache = None
    for i, kind in enumerate(runs):
      if kind == "cold":
        cache = str(pathlib.Path(tmp) / f"cache{i}")
      elif kind == "warm" and cache is None:
        p.error("--runs: 'warm' needs a 'cold' run before it")
      seen = time_launch(args.config, None if kind == "off" else cache,
                         args.data_dir, pathlib.Path(tmp) / f"run{i}",
                         args.timeout)
      rows.append((kind, seen))
      print(f"{kind:5s} " + "  ".join(
          f"{name} {seen[name]:.1f} s" for name, _ in MILESTONES
          if name in seen), flush=True)
  print(f"\nseconds from `python launch.py --config {args.config}` to each "
        "line (dataset already prepared):")
  print("run    " + "  ".join(f"{n:>10s}" for n, _ in MILESTONES))
  for kind, seen in rows:
    print(f"{kind:5s}  " + "  ".join(
        f"{seen[n]:10.1f}" if n in seen else f"{'-':>10s}"
        for n, _ in MILESTONES))
  return 0


if __name__ == "__main__":
  sys.exit(main())
