r"""Loss weightings for MT-CP-style training: fixed, uncertainty, DWA and our
stable LPS (plus, with --released, MT-CP's released epoch-level and
per-iteration LPS) on one config, over seeds, against single-task runs.

  python benchmarks/lps_compare.py --steps 40 --seeds 3
  python benchmarks/lps_compare.py --config configs/synthetic_mtcp.py \
      --steps 400 --released

A thin front end of benchmarks/mtl_methods.py (same training, evaluation,
single-task references, Delta_m and table; see its docstring): it fixes the
method list and scales the schemes' history windows to the budget, since at
their defaults (DWA/LPS periods of 500 steps, LPS warm-up 200) a short run
never leaves equal weights. With P = --period (default steps // 8):

  fixed                  all weights 1
  uncertainty            Kendall et al. (log-variances trained)
  dwa:period=P           DWA on P-step "epochs"
  lps:warmup=P:period=P  our stable LPS (weighting/lps.py, the default)
  --released adds
  lps_epoch:steps_per_epoch=P:apply_weights=True:spread=S
                         the released epoch-level ratios + spread S
                         (--spread, 7.5 = NYUD), applied (released: ignored,
                         which is the same as "fixed")
  lps_iteration          the released per-iteration recurrence; it diverges
                         within ~10 steps (metrics NaN: the row shows it)

Default config: configs/synthetic_baseline.py:runlocal (a small ViT and
per-task heads) at the NYUD-like task set semseg, depth, normals. Any
config works with --config (and --set key=value overrides); depth metrics
name a truncated evaluation range in their key (rmse_lt6.5535m with MT-CP's
max_depth).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import mtl_methods  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = f"{REPO / 'configs' / 'synthetic_baseline.py'}:runlocal"
NYUD_TASKS = "tasks=('semseg','depth','normals')"


def methods(period: int, released: bool, spread: float) -> list[str]:
  out = ["fixed", "uncertainty", f"dwa:period={period}",
         f"lps:warmup={period}:period={period}"]
  if released:
    out += [f"lps_epoch:steps_per_epoch={period}:apply_weights=True:"
            f"spread={spread}", "lps_iteration"]
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default=DEFAULT_CONFIG)
  ap.add_argument("--set", action="append", default=None,
                  help="config override key.sub=value (default, with the "
                  f"default config: {NYUD_TASKS})")
  ap.add_argument("--steps", type=int, default=40)
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--period", type=int, default=0,
                  help="history window of dwa/lps/lps_epoch (0: steps // 8)")
  ap.add_argument("--spread", type=float, default=7.5)
  ap.add_argument("--released", action="store_true")
  ap.add_argument("--data_dir", default=None)
  ap.add_argument("--out", default="runs/lps_compare/results.json")
  args = ap.parse_args(argv)
  sets = args.set
  if sets is None:
    sets = [NYUD_TASKS] if args.config == DEFAULT_CONFIG else []
  period = args.period or max(1, args.steps // 8)
  forwarded = ["--config", args.config, "--steps", str(args.steps),
               "--seeds", str(args.seeds), "--batch", str(args.batch),
               "--methods", ",".join(methods(period, args.released,
                                             args.spread)),
               "--out", args.out]
  forwarded += [f"--set={s}" for s in sets]
  if args.data_dir:
    forwarded += ["--data_dir", args.data_dir]
  mtl_methods.main(forwarded)


if __name__ == "__main__":
  main()
