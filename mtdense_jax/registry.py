"""Plugin lookup by module convention (big_vision style, no central table).

A task is the module ``mtdense_jax.tasks.<name>``, a weighting scheme
``mtdense_jax.weighting.<name>``, an encoder ``mtdense_jax.models.encoders.
<name>``, a decoder ``mtdense_jax.models.decoders.<name>`` and a dataset
builder ``data_builders.<name>``. Adding one is adding one file (or folder);
nothing here changes.
"""

from __future__ import annotations

import importlib
import pkgutil
import types

_PACKAGES = {
    "task": "mtdense_jax.tasks",
    "weighting": "mtdense_jax.weighting",
    "encoder": "mtdense_jax.models.encoders",
    "decoder": "mtdense_jax.models.decoders",
    "dataset": "data_builders",
}
# Modules inside plugin packages that are helpers, not plugins.
_NOT_PLUGINS = frozenset({"base", "common", "testing"})


def available(kind: str) -> list[str]:
  """Names of every plugin of `kind` found on disk."""
  pkg = importlib.import_module(_PACKAGES[kind])
  return sorted(
      m.name for m in pkgutil.iter_modules(pkg.__path__)
      if not m.name.startswith("_") and m.name not in _NOT_PLUGINS)


def lookup(kind: str, name: str) -> types.ModuleType:
  """Imports the plugin module `name` of `kind`, with a helpful error."""
  if kind not in _PACKAGES:
    raise KeyError(f"Unknown plugin kind {kind!r}; one of {sorted(_PACKAGES)}")
  names = available(kind)
  if name not in names:
    raise KeyError(
        f"Unknown {kind} {name!r}. Available {kind}s: {', '.join(names)}. "
        f"Add one as {_PACKAGES[kind].replace('.', '/')}/{name}.py.")
  return importlib.import_module(f"{_PACKAGES[kind]}.{name}")
