"""Clear errors for bad configs, before anything expensive runs.

``validate`` checks a loaded config against the defaults in
``config_defaults.base_config`` (the schema) and the plugin registry, and
names the offending key. ``preflight`` runs before absl parses flags, because
ml_collections reports an unknown ``--config.a.b=v`` override as a bare
``AttributeError`` traceback and a failing ``get_config(arg)`` as an empty
"FATAL Flags parsing error".
"""

from __future__ import annotations

import difflib
import sys
from typing import Any, Callable, Sequence

import ml_collections as mlc

from mtdense_jax import config_defaults, registry

# Free-form sub-dicts: their keys belong to a plugin, not to the schema.
_FREE_FORM = {"task_kw", "data.builder_kwargs", "model.encoder_kw",
              "model.decoder_kw", "weighting.kw", "eval.stl_baselines",
              "loss.aux_weights", "loss.extra_weights", "optim.layer_decay"}


class ConfigError(ValueError):
  """A config key or value is wrong; the message names it."""


def _unknown_keys(cfg: Any, schema: Any, prefix: str = "") -> list[str]:
  bad = []
  for key in cfg.keys():
    path = f"{prefix}{key}"
    if key not in schema:
      near = difflib.get_close_matches(key, list(schema.keys()), n=1)
      hint = f" (did you mean {prefix}{near[0]!r}?)" if near else ""
      bad.append(f"config.{path}{hint}")
    elif path not in _FREE_FORM and isinstance(schema[key], mlc.ConfigDict):
      bad += _unknown_keys(cfg[key], schema[key], path + ".")
  return bad


def validate(config: mlc.ConfigDict) -> None:
  """Raises ConfigError naming every unknown key or plugin name."""
  bad = _unknown_keys(config, config_defaults.base_config())
  if bad:
    raise ConfigError("Unknown config key(s): " + ", ".join(bad))
  checks = [("task", t, f"config.tasks entry {t!r}") for t in config.tasks]
  checks += [("encoder", config.model.encoder, "config.model.encoder"),
             ("decoder", config.model.decoder, "config.model.decoder"),
             ("weighting", config.weighting.name, "config.weighting.name"),
             ("dataset", config.data.name, "config.data.name")]
  for kind, name, where in checks:
    if name not in registry.available(kind):
      raise ConfigError(f"{where}: unknown {kind} {name!r}; available: "
                        f"{', '.join(registry.available(kind))}.")
  if config.eval.protocol not in ("invpt", "mtl"):
    raise ConfigError(f"config.eval.protocol={config.eval.protocol!r}; "
                      "expected 'invpt' or 'mtl'.")


def load_config_file(spec: str) -> mlc.ConfigDict:
  """'path/to/cfg.py[:arg]' -> get_config(arg), with a clear error."""
  path, _, arg = spec.partition(":")
  try:
    module = config_defaults.load_module(path)
    return module.get_config(arg or None)
  except FileNotFoundError as e:
    raise ConfigError(f"--config {path}: no such config file.") from e
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"--config {spec}: get_config failed: {e}") from e


def check_overrides(config: mlc.ConfigDict, argv: Sequence[str]) -> None:
  """Every --config.a.b=v must name an existing field."""
  for item in argv:
    if not item.startswith("--config."):
      continue
    dotted = item[len("--config."):].split("=", 1)[0]
    node, walked = config, []
    for part in dotted.split("."):
      if not isinstance(node, mlc.ConfigDict) or part not in node:
        keys = list(node.keys()) if isinstance(node, mlc.ConfigDict) else []
        near = difflib.get_close_matches(part, keys, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(
            f"{item}: config has no key {'.'.join(walked + [part])!r}{hint} "
            f"Keys under {'.'.join(walked) or 'config'}: {', '.join(keys)}")
      node, walked = node[part], walked + [part]


def preflight(argv: Sequence[str]) -> None:
  spec = None
  for i, item in enumerate(argv):
    if item.startswith("--config="):
      spec = item.split("=", 1)[1]
    elif item == "--config" and i + 1 < len(argv):
      spec = argv[i + 1]
  if spec:
    check_overrides(load_config_file(spec), argv)


def run_checked(run: Callable, main: Callable) -> None:
  """absl app.run(main) after preflight; config errors exit with code 2."""
  try:
    preflight(sys.argv)
  except ConfigError as e:
    print(f"Config error: {e}", file=sys.stderr)
    sys.exit(2)
  run(main)
