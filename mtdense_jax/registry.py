"""Plugin lookup by module convention (big_vision style, no central table).

A task is the module ``mtdense_jax.tasks.<name>``, a weighting scheme
``mtdense_jax.weighting.<name>``, an encoder ``mtdense_jax.models.encoders.
<name>``, a decoder ``mtdense_jax.models.decoders.<name>`` and a dataset
builder ``data_builders.<name>``. Adding one is adding one file (or folder);
nothing here changes.

A dotted name (``"my_project.tasks.height"``, ``"tests.toy_task"``) is imported
as given, so plugins may also live outside this package (research code, test
plugins) and need no file here at all.
"""

from __future__ import annotations

import importlib
import pathlib
import pkgutil
import re
import types

_PACKAGES = {
    "task": "mtdense_jax.tasks",
    "weighting": "mtdense_jax.weighting",
    "gradmethod": "mtdense_jax.gradmethods",
    "encoder": "mtdense_jax.models.encoders",
    "decoder": "mtdense_jax.models.decoders",
    "dataset": "data_builders",
}
# What makes a module a plugin of each kind (helper modules lack it).
_ENTRY_POINT = {"task": "Task", "weighting": "Weighting", "encoder": "build",
                "gradmethod": "Method",
                "decoder": "build", "dataset": "make_builder"}


def available(kind: str) -> list[str]:
  """Names of every plugin of `kind` found on disk.

  Found without importing (a half-written plugin must not break lookups of
  the others): a plugin module or package defines its entry point at top
  level (`class Task`, `def build`, ...); helper modules do not.
  """
  pkg = importlib.import_module(_PACKAGES[kind])
  entry = re.compile(rf"^(class|def) {_ENTRY_POINT[kind]}\b", re.M)
  names = []
  for m in pkgutil.iter_modules(pkg.__path__):
    if m.name.startswith("_") or m.name == "base":
      continue
    path = pathlib.Path(m.module_finder.path) / m.name
    files = list(path.glob("*.py")) if m.ispkg else [path.with_suffix(".py")]
    if any(entry.search(f.read_text()) for f in files if f.exists()):
      names.append(m.name)
  return sorted(names)


def lookup(kind: str, name: str) -> types.ModuleType:
  """Imports the plugin module `name` of `kind`, with a helpful error."""
  if kind not in _PACKAGES:
    raise KeyError(f"Unknown plugin kind {kind!r}; one of {sorted(_PACKAGES)}")
  if "." in name:
    return _import_external(kind, name)
  names = available(kind)
  if name not in names:
    raise KeyError(
        f"Unknown {kind} {name!r}. Available {kind}s: {', '.join(names)}. "
        f"Add one as {_PACKAGES[kind].replace('.', '/')}/{name}.py.")
  return importlib.import_module(f"{_PACKAGES[kind]}.{name}")


def _import_external(kind: str, name: str) -> types.ModuleType:
  """A plugin given by its full module path, checked for its entry point."""
  try:
    module = importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name and name.startswith(e.name):
      raise KeyError(f"Unknown {kind} {name!r}: no module {e.name!r} on the "
                     "Python path.") from None
    raise
  if not hasattr(module, _ENTRY_POINT[kind]):
    raise KeyError(f"{kind} plugin {name!r} defines no "
                   f"{_ENTRY_POINT[kind]!r}.")
  return module
