"""benchmarks/train_step.py --ref-config: the perf contract of
../shared/perf/README.md (one JSON line with median_ms, params, compile_s)
over exactly the reference's benchmark model (params == params_used)."""

from __future__ import annotations

import json

import pytest

from mtdense_jax import config_defaults
from tests.conftest import REPO

PERF = REPO.parent / "shared" / "perf" / "configs.json"


@pytest.fixture(scope="module")
def bench():
  return config_defaults.load_module(REPO / "benchmarks" / "train_step.py")


def test_ref_config_tiny_prints_the_contract_line(bench, capsys):
  if not PERF.is_file():
    pytest.skip(f"{PERF} not found (the read-only shared/ folder)")
  assert bench.main(["--ref-config", f"{PERF}:tiny", "--mode", "train",
                     "--warmup", "0", "--steps", "1", "--json"]) == 0
  out = capsys.readouterr()
  lines = [l for l in out.out.splitlines() if l.startswith("{")]
  assert len(lines) == 1, out.out
  row = json.loads(lines[0])
  ref = json.loads(PERF.read_text())["configs"]["tiny"]
  assert row["params"] == row["params_used"] == ref["params_used"]
  assert row["median_ms"] > 0 and row["compile_s"] > 0
  assert (row["mode"], row["steps"], row["batch"]) == ("train", 1,
                                                       ref["batch"])
  assert row["loss_total_last"] > 0
  assert "WARNING" not in out.err


def test_ref_config_errors_name_the_problem(bench, tmp_path):
  with pytest.raises(SystemExit, match="FILE:NAME"):
    bench.main(["--ref-config", str(PERF)])
  bad = tmp_path / "configs.json"
  bad.write_text(json.dumps({"configs": {"tiny": {}}}))
  with pytest.raises(SystemExit, match="no configuration 'huge'"):
    bench.main(["--ref-config", f"{bad}:huge"])
