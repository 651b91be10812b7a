"""data.inspect without --config uses the dataset's first builder config and
stops with a one-line hint when the data is not prepared."""

from __future__ import annotations

import pytest

from mtdense_jax.data import inspect


def test_inspect_without_config_picks_the_first_and_says_what_to_do(
    tmp_path):
  with pytest.raises(SystemExit) as e:
    inspect.main(["--dataset", "synthetic_scenes", "--data_dir",
                  str(tmp_path)])
  msg = str(e.value.code)
  assert "not prepared" in msg and "--prepare" in msg
  assert "\n" not in msg
  assert "synthetic_scenes/nyud_like" in msg
