"""Every plugin found on disk honours its interface (no central list)."""

from __future__ import annotations

import inspect

import pytest

from mtdense_jax import registry
from mtdense_jax.models import features
from mtdense_jax.tasks import base as task_base
from mtdense_jax.weighting import base as weighting_base


@pytest.mark.parametrize("name", registry.available("task"))
def test_task_plugin(name):
  module = registry.lookup("task", name)
  assert issubclass(module.Task, task_base.Task)
  assert module.Task.name == name
  assert module.Task.metric_directions, "needs at least a primary metric"
  for hook in ("loss", "postprocess", "metric_init", "metric_update",
               "metric_compute", "colorize"):
    assert getattr(module.Task, hook) is not getattr(task_base.Task, hook), (
        f"task {name} does not implement {hook}")


@pytest.mark.parametrize("name", registry.available("weighting"))
def test_weighting_plugin(name):
  module = registry.lookup("weighting", name)
  assert issubclass(module.Weighting, weighting_base.Weighting)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_model_plugins(kind):
  names = registry.available(kind)
  assert names
  for name in names:
    module = registry.lookup(kind, name)
    params = inspect.signature(module.build).parameters
    assert "rngs" in params and "img_size" in params
    if kind == "decoder":   # Declares what it reads, checked at build.
      assert isinstance(module.consumes(), features.Consumes), name
    for source, fn in getattr(module, "CONVERTERS", {}).items():
      assert {"tasks", "build"} <= set(inspect.signature(fn).parameters), (
          f"{kind} {name}: converter {source!r} must take (state_dict, *, "
          "tasks, build)")


@pytest.mark.parametrize("name", registry.available("dataset"))
def test_dataset_plugin(name):
  module = registry.lookup("dataset", name)
  assert hasattr(module, "Builder") and callable(module.make_builder)


def test_unknown_names_are_clear():
  with pytest.raises(KeyError, match="Available tasks: .*semseg"):
    registry.lookup("task", "semseg2")
  with pytest.raises(KeyError, match="Unknown decoder 'nope'"):
    registry.lookup("decoder", "nope")


def test_dotted_names_import_external_plugins():
  assert registry.lookup("weighting", "mtdense_jax.weighting.fixed").Weighting
  with pytest.raises(KeyError, match="no module 'nowhere'"):
    registry.lookup("task", "nowhere.height")
  with pytest.raises(KeyError, match="defines no 'Task'"):
    registry.lookup("task", "mtdense_jax.tasks.common")
