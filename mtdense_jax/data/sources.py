"""Dataset plugins -> prepared TFDS builders -> grain-readable data sources.

A dataset is the package ``data_builders/<data.name>/`` exporting
``make_builder(config, *, data_dir, manual_dir, **overrides)`` (see
CONTRACT.md). Builders write ``array_record`` files, which
``builder.as_data_source(split)`` reads with random access and no TensorFlow.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

from absl import logging
import jax

from mtdense_jax import registry


def get_builder(data_cfg: Any):
  """The (maybe unprepared) TFDS builder named by `data_cfg`.

  Cached per dataset identity: every evaluation asks for its source again,
  and rebuilding the builder re-reads dataset_info (and logs) each time.
  """
  kwargs = dict(data_cfg.get("builder_kwargs", None) or {})
  return _builder(data_cfg.name, data_cfg.get("config", None),
                  data_cfg.get("data_dir", None),
                  data_cfg.get("manual_dir", None),
                  tuple(sorted(kwargs.items())))


@functools.lru_cache(maxsize=16)
def _builder(name, config, data_dir, manual_dir, kwargs):
  module = registry.lookup("dataset", name)
  return module.make_builder(config, data_dir=data_dir, manual_dir=manual_dir,
                             **dict(kwargs))


def prepare(builder) -> None:
  """Builds the array_record files once; later calls only read them.

  Real-data builders raise their own "put archive X in folder Y" error when the
  manual download is missing; it is deliberately not caught here. On several
  hosts sharing one data_dir, prepare once before launching (or let process 0
  do it); each host preparing its own local data_dir is also fine.
  """
  if builder.is_prepared():
    return
  logging.info("Process %d: preparing %s in %s", jax.process_index(),
               builder.name, builder.data_dir)
  builder.download_and_prepare(file_format="array_record")


def dataset_meta(builder) -> dict[str, Any]:
  """The dataset's metadata (tasks, num_classes, ...) as a plain dict."""
  meta = dict(builder.info.metadata or {})
  meta["tasks"] = list(meta.get("tasks", []))
  meta["num_classes"] = dict(meta.get("num_classes", {}) or {})
  return meta


def check_tasks(meta: dict[str, Any], task_names: Sequence[str],
                dataset: str = "dataset") -> None:
  """Fails early and clearly when a configured task has no labels."""
  missing = [t for t in task_names if t not in meta["tasks"]]
  if missing:
    raise ValueError(
        f"Task(s) {missing} are not provided by {dataset!r}, whose tasks are "
        f"{meta['tasks']}. Remove them from the config or pick a dataset "
        "(config) that labels them.")


def data_source(builder, split: str):
  """Random-access source for `split` (decodes on __getitem__)."""
  return builder.as_data_source(split)


def load(data_cfg: Any, task_names: Sequence[str], split: str):
  """get_builder + prepare + task check + data_source, in one call."""
  builder = get_builder(data_cfg)
  prepare(builder)
  check_tasks(dataset_meta(builder), task_names, data_cfg.name)
  return data_source(builder, split)
