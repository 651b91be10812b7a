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
import math
import sys
from typing import Any, Callable, Sequence

import ml_collections as mlc

from mtdense_jax import config_defaults, registry

# Free-form sub-dicts: their keys belong to a plugin, not to the schema.
_FREE_FORM = {"task_kw", "data.builder_kwargs", "model.encoder_kw",
              "model.decoder_kw", "weighting.kw", "eval.stl_baselines",
              "loss.aux_weights", "loss.extra_weights", "optim.layer_decay",
              "loss.aux_loss_from", "loss.aux_reduce"}


class ConfigError(ValueError):
  """A config key or value is wrong; each line of the message names one."""

  def lines(self) -> list[str]:
    return str(self).splitlines()


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
  """Raises ConfigError naming every unknown key, plugin name or bad value.

  Cheap (no data, no compilation), so launch.py runs it before anything that
  takes minutes; one line per problem.
  """
  bad = _unknown_keys(config, config_defaults.base_config())
  if bad:
    raise ConfigError("Unknown config key(s): " + ", ".join(bad))
  checks = [("task", t, f"config.tasks entry {t!r}") for t in config.tasks]
  checks += [("encoder", config.model.encoder, "config.model.encoder"),
             ("decoder", config.model.decoder, "config.model.decoder"),
             ("dataset", config.data.name, "config.data.name")]
  _weighting_check(config.weighting.name)
  for kind, name, where in checks:
    if "." in str(name):   # An external plugin: importing it is the check.
      try:
        registry.lookup(kind, name)
      except KeyError as e:
        raise ConfigError(f"{where}: {e.args[0]}") from None
    elif name not in registry.available(kind):
      raise ConfigError(f"{where}: unknown {kind} {name!r}; available: "
                        f"{', '.join(registry.available(kind))}.")
  _protocol_check(config)
  errors = check_values(config)
  if errors:
    raise ConfigError("\n".join(errors))


def _protocol_check(config) -> None:
  """config.eval.protocol: known, and implemented by every configured task."""
  # pylint: disable-next=g-import-not-at-top
  from mtdense_jax.tasks import base as task_base
  protocol = config.eval.protocol
  if protocol not in task_base.PROTOCOLS:
    raise ConfigError(f"config.eval.protocol={protocol!r}; expected one of "
                      f"{', '.join(map(repr, task_base.PROTOCOLS))}.")
  for entry in config.tasks:
    cls = task_base.task_class(entry)
    if protocol not in cls.protocols:
      raise ConfigError(
          f"config.eval.protocol={protocol!r} is not implemented by task "
          f"{cls.name!r}, which supports {', '.join(map(repr, cls.protocols))}"
          "; pick one of those or drop the task.")


def _weighting_check(name: str) -> None:
  """config.weighting.name: a loss weighting or a gradient method."""
  # pylint: disable-next=g-import-not-at-top
  from mtdense_jax.gradmethods import base as gm_base
  try:
    gm_base.resolve(str(name))
  except KeyError as e:
    raise ConfigError(f"config.weighting.name: {e.args[0]}") from None


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
  return (isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(v))


# (key, test, what the value must be). Integers are checked for type too:
# a float batch size reaches grain and numpy as a confusing TypeError.
_INT_AT_LEAST_1 = ("train.steps", "train.batch_size", "train.log_every",
                   "train.eval_every", "train.ckpt_every", "train.keep_ckpts",
                   "train.grad_accum", "eval.batch_size", "optim.total_steps",
                   "mesh.model")
_INT_AT_LEAST_0 = ("seed", "optim.warmup_steps", "data.worker_count",
                   "data.prefetch", "sharding.min_size")
_RULES = (
    [(k, lambda v: _is_int(v) and v >= 1, "an integer >= 1")
     for k in _INT_AT_LEAST_1] +
    [(k, lambda v: _is_int(v) and v >= 0, "an integer >= 0")
     for k in _INT_AT_LEAST_0] + [
        ("optim.lr", lambda v: _is_real(v) and v > 0, "a finite number > 0"),
        ("optim.weight_decay", lambda v: _is_real(v) and v >= 0,
         "a finite number >= 0"),
        ("optim.b1", lambda v: _is_real(v) and 0 <= v < 1, "in [0, 1)"),
        ("optim.b2", lambda v: _is_real(v) and 0 <= v < 1, "in [0, 1)"),
        ("optim.eps", lambda v: _is_real(v) and v > 0, "a finite number > 0"),
        ("optim.poly_power", lambda v: _is_real(v) and v > 0,
         "a finite number > 0"),
        ("optim.min_lr", lambda v: _is_real(v) and v >= 0,
         "a finite number >= 0"),
        ("optim.grad_clip_norm", lambda v: v is None or (_is_real(v) and
                                                         v > 0),
         "None or a finite number > 0"),
        ("loss.aux_weight", lambda v: _is_real(v) and v >= 0,
         "a finite number >= 0"),
        ("data.cat_max_ratio", lambda v: _is_real(v) and 0 < v <= 1,
         "in (0, 1]"),
        ("data.image_size", lambda v: isinstance(v, (tuple, list)) and
         len(v) == 2 and all(_is_int(x) and x >= 1 for x in v),
         "two integers >= 1 (height, width)"),
        ("data.scale_range", lambda v: isinstance(v, (tuple, list)) and
         len(v) == 2 and all(_is_real(x) and x > 0 for x in v) and
         v[0] <= v[1], "two numbers 0 < low <= high"),
        ("data.image_mean", lambda v: isinstance(v, (tuple, list)) and
         len(v) == 3 and all(_is_real(x) for x in v), "three numbers (RGB)"),
        ("data.image_std", lambda v: isinstance(v, (tuple, list)) and
         len(v) == 3 and all(_is_real(x) and x > 0 for x in v),
         "three numbers > 0 (RGB)"),
        ("mesh.data", lambda v: _is_int(v) and (v == -1 or v >= 1),
         "-1 (all devices) or an integer >= 1"),
        ("eval.boundary.max_dist", lambda v: v is None or (_is_real(v) and
                                                           v > 0),
         "None or a number > 0"),
        ("eval.boundary.thresholds", lambda v: v is None or (_is_int(v) and
                                                             v >= 1),
         "None or an integer >= 1"),
    ])


def _get(config: Any, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    node = node.get(part) if hasattr(node, "get") else None
  return node


def _plugin_checks(config: mlc.ConfigDict, optim_ok: bool) -> list[str]:
  """Checks that belong to other modules, run here so they happen early;
  their messages already name the key."""
  # pylint: disable=g-import-not-at-top
  from mtdense_jax.models import multitask
  from mtdense_jax.models.layers import common
  from mtdense_jax.train import optim, sharding
  # pylint: enable=g-import-not-at-top
  errors = []
  for fn in (lambda: multitask.compute_dtype(config.model.dtype),
             lambda: common.remat_policy(config.model.remat,
                                         config.model.remat_policy)):
    try:
      fn()
    except (ValueError, KeyError, TypeError) as e:
      errors.append(str(e.args[0] if e.args else e))
  strategy = config.sharding.strategy
  if strategy not in sharding.STRATEGIES:
    errors.append(f"config.sharding.strategy={strategy!r}; expected one of "
                  f"{sharding.STRATEGIES}.")
  try:
    if optim_ok:
      optim.make_optimizer(config.optim)
  except (ValueError, KeyError, TypeError) as e:
    errors.append(f"config.optim: {e.args[0] if e.args else e}")
  return errors


def _encoder_checks(config: mlc.ConfigDict) -> list[str]:
  """Known variant and patch divisibility, for encoders that publish a
  ``VARIANTS`` table and name variants "<size>/<patch>" (big_vision)."""
  if "." in config.model.encoder:
    return []
  module = registry.lookup("encoder", config.model.encoder)
  variants = getattr(module, "VARIANTS", None)
  variant = config.model.variant
  if variants is not None and variant not in variants:
    return [f"config.model.variant={variant!r}: unknown "
            f"{config.model.encoder} variant; one of {', '.join(variants)}."]
  kw = config.model.get("encoder_kw") or {}
  patch = kw.get("patch_size")
  if patch is None and "/" in str(variant):
    tail = str(variant).rsplit("/", 1)[1]
    patch = int(tail) if tail.isdigit() else None
  size = tuple(config.data.image_size)
  if _is_int(patch) and patch > 0 and any(s % patch for s in size):
    return [f"config.data.image_size={size} is not divisible by the patch "
            f"size {patch} of config.model.variant={variant!r}; use "
            f"multiples of {patch}, e.g. "
            f"{tuple(-(-s // patch) * patch for s in size)}."]
  return []


def check_values(config: mlc.ConfigDict) -> list[str]:
  """One line per out-of-range, mistyped or inconsistent value."""
  errors, bad = [], set()
  for key, ok, want in _RULES:
    value = _get(config, key)
    if not ok(value):
      errors.append(f"config.{key}={value!r}: must be {want}.")
      bad.add(key)
  tasks = list(config.tasks)
  if not tasks:
    errors.append("config.tasks is empty: name at least one task.")
  dup = sorted({t for t in tasks if tasks.count(t) > 1})
  if dup:
    errors.append(f"config.tasks lists {dup} more than once.")
  # Consistency checks, each once the values it combines are sane.
  accum, batch = config.train.grad_accum, config.train.batch_size
  if not {"train.grad_accum", "train.batch_size"} & bad and batch % accum:
    errors.append(f"config.train.batch_size={batch} is not divisible by "
                  f"config.train.grad_accum={accum}.")
  if not {"optim.total_steps", "optim.warmup_steps"} & bad and (
      config.optim.schedule != "constant" and
      config.optim.total_steps <= config.optim.warmup_steps):
    errors.append(f"config.optim.total_steps={config.optim.total_steps} must "
                  f"exceed config.optim.warmup_steps="
                  f"{config.optim.warmup_steps}.")
  if config.eval.boundary.enabled:
    # Imported only here: the matchers pull in numba and pyEdgeEval.
    from mtdense_jax.evaluators import boundary  # pylint: disable=g-import-not-at-top
    if config.eval.boundary.matcher not in boundary.MATCHERS:
      errors.append(f"config.eval.boundary.matcher="
                    f"{config.eval.boundary.matcher!r}: expected one of "
                    f"{sorted(boundary.MATCHERS)}.")
  errors += _plugin_checks(config, not any(k.startswith("optim.")
                                           for k in bad))
  if "data.image_size" not in bad:
    errors += _encoder_checks(config)
  return errors


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


def exit_with(error: ConfigError) -> None:
  """Prints one 'Config error:' line per problem and exits with code 2."""
  for line in error.lines():
    print(f"Config error: {line}", file=sys.stderr)
  sys.exit(2)


def run_checked(run: Callable, main: Callable) -> None:
  """absl app.run(main) after preflight; config errors exit with code 2."""
  try:
    preflight(sys.argv)
  except ConfigError as e:
    exit_with(e)
  run(main)
