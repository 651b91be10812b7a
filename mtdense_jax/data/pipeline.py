"""grain input pipelines: infinite shuffled train batches, padded eval passes.

Batches are process-local dicts of numpy arrays (CONTRACT.md): ``image``
float32 (b, H, W, 3) ImageNet-normalised, one key per task (b, H, W, C), the
task's name, in its label dtype with its fill value (255 unless a task option
changes it) = ignore, and ``valid`` bool (b,), where
b = global_batch_size // jax.process_count(). Augmentation: see transforms.py
(the InvPT recipe).

``tasks`` arguments take the Task objects (what training passes, with the
config's task options) or plugin names, which are built with default options
and the dataset's num_classes. The pipeline only loops over them.

Fields read from the ``data`` ConfigDict:
  name: dataset plugin, the package data_builders/<name>/.
  config: builder config name (e.g. a task set); passed to make_builder.
  data_dir: TFDS data dir; None -> the TFDS default (~/tensorflow_datasets).
  manual_dir: where real-data builders find their archives (None -> TFDS
    default <data_dir>/downloads/manual).
  builder_kwargs: dict of builder-specific overrides (e.g. synthetic sizes).
  train_split: 'train'.   eval_split: 'validation'.
  image_size: (H, W) of every batch: the train crop and the eval pad size.
  scale_range: (lo, hi) of the random rescale factor, (0.5, 2.0); (1, 1) = off.
  flip: random horizontal flips (True).
  photometric: photometric distortion (True).
  image_mean, image_std: RGB statistics of the standardisation after
    scaling to [0, 1] (ImageNet's); (0, 0, 0) / (1, 1, 1) = [0, 1] images.
  cat_max_ratio: InvPT crop re-draw threshold (0.75) on the first task that
    `balances_crop`; 1 = off.
  worker_count: grain worker processes for training (0 = in-process threads).
    Batches depend on it: keep it fixed to reproduce or resume a run.
  prefetch: batches buffered ahead (2).
  read_threads: optional, threads reading/transforming per process (2).

Sharding: process p reads records p, p + P, ... (P = process count) of every
split, so hosts see disjoint data. Train: each process shuffles its shard with
a seed derived from (seed, p), reshuffles every epoch and repeats forever.
Eval: the split is padded to a multiple of the global batch with copies marked
``valid=False`` (image 0, labels their fill), so every process yields the
same number of equally shaped batches.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Mapping, Sequence, Union

import grain
import jax
import numpy as np

from mtdense_jax.data import sources
from mtdense_jax.data import transforms as T
from mtdense_jax.tasks import base as task_base

TaskArg = Union[Sequence[Union[str, task_base.Task]],
                Mapping[str, task_base.Task]]


def _process(process_index: int | None,
             process_count: int | None) -> tuple[int, int]:
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  return pi, pc


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(
        f"global batch size {global_batch_size} is not divisible by the "
        f"{process_count} processes.")
  return global_batch_size // process_count


def _read_options(data_cfg: Any) -> grain.ReadOptions:
  return grain.ReadOptions(
      num_threads=int(data_cfg.get("read_threads", 2)),
      prefetch_buffer_size=int(data_cfg.get("prefetch", 2)))


def _size(data_cfg: Any) -> tuple[int, int]:
  h, w = data_cfg.image_size
  return int(h), int(w)


def resolve_tasks(tasks: TaskArg, data_cfg: Any = None
                  ) -> tuple[task_base.Task, ...]:
  """Task objects as given, or built from names (default options).

  Names need the dataset's num_classes: taken from data_cfg's builder.
  """
  items = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
  num_classes = None
  if not all(isinstance(t, task_base.Task) for t in items):
    if data_cfg is None or not data_cfg.get("name"):
      raise ValueError("Task names need a data config naming the dataset "
                       "(for num_classes); pass Task objects instead.")
    meta = sources.dataset_meta(sources.get_builder(data_cfg))
    num_classes = meta["num_classes"]
  return task_base.build_all(items, num_classes=num_classes)


def task_names(tasks: TaskArg) -> list[str]:
  """The batch keys of `tasks` (a dotted plugin entry is resolved)."""
  items = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
  return [t.name if isinstance(t, task_base.Task)
          else task_base.task_class(t).name if "." in t else t
          for t in items]


def train_dataset(
    source: Sequence[dict[str, Any]],
    tasks: TaskArg,
    data_cfg: Any,
    *,
    global_batch_size: int,
    seed: int,
    worker_count: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
  """The infinite augmented train stream over any random-access `source`."""
  pi, pc = _process(process_index, process_count)
  local = _local_batch_size(global_batch_size, pc)
  tasks = resolve_tasks(tasks, data_cfg)
  size = _size(data_cfg)
  # Distinct per-process streams, reproducible from `seed` alone.
  pseed = int(np.random.SeedSequence([seed, pi]).generate_state(1)[0])
  ds = grain.MapDataset.source(source)
  if pc > 1:
    ds = ds[pi::pc]
  ds = ds.map(T.SelectTasks(tasks)).seed(pseed).shuffle().repeat()
  lo, hi = data_cfg.get("scale_range", (0.5, 2.0))
  if (lo, hi) != (1.0, 1.0):
    ds = ds.random_map(T.RandomScale(tasks, (float(lo), float(hi))))
  ratio = float(data_cfg.get("cat_max_ratio", 0.75))
  ds = ds.random_map(T.RandomCrop(tasks, size, ratio))
  if data_cfg.get("flip", True):
    ds = ds.random_map(T.RandomHorizontalFlip(tasks))
  if data_cfg.get("photometric", True):
    ds = ds.random_map(T.PhotometricDistortion())
  ds = ds.map(T.Normalize.for_config(data_cfg)).map(T.Pad(size, tasks))
  ds = ds.map(T.AddIgnoreRegions(tasks)).map(T.BlankInvalid(tasks))
  ds = ds.batch(local, drop_remainder=True)
  it_ds = ds.to_iter_dataset(_read_options(data_cfg))
  workers = data_cfg.get("worker_count", 0) if worker_count is None else (
      worker_count)
  if workers:
    it_ds = it_ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=int(workers)))
  return it_ds


@dataclasses.dataclass(frozen=True)
class EvalData:
  """One ordered pass over a split (re-iterable), with its sizes."""

  dataset: grain.MapDataset
  read_options: grain.ReadOptions
  num_examples: int  # real examples in the split (all processes)

  def __len__(self) -> int:
    return len(self.dataset)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return iter(self.dataset.to_iter_dataset(self.read_options))


def eval_dataset(
    source: Sequence[dict[str, Any]],
    tasks: TaskArg,
    data_cfg: Any,
    *,
    global_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    keep: Sequence[str] = (),
) -> EvalData:
  """Normalise + pad only; the tail padded with valid=False examples.

  `keep`: extra per-pixel features to carry (padded with 0), for evaluators
  that score against something other than a task label.
  """
  pi, pc = _process(process_index, process_count)
  local = _local_batch_size(global_batch_size, pc)
  n = len(source)
  if n == 0:
    raise ValueError("Cannot evaluate on an empty split.")
  total = math.ceil(n / global_batch_size) * global_batch_size
  tasks = resolve_tasks(tasks, data_cfg)
  keep = tuple(keep)
  ds = grain.MapDataset.source(source).map(T.SelectTasks(tasks, keep))
  if total > n:
    # Padding slots re-read real records (right shapes), blanked below.
    ds = ds.repeat(math.ceil(total / n))[:total]
  ds = ds.map_with_index(T.MarkValid(n))
  if pc > 1:
    ds = ds[pi::pc]
  ds = ds.map(T.Normalize.for_config(data_cfg)).map(
      T.Pad(_size(data_cfg), tasks, keep))
  ds = ds.map(T.AddIgnoreRegions(tasks)).map(T.BlankInvalid(tasks))
  ds = ds.batch(local, drop_remainder=True)
  return EvalData(ds, _read_options(data_cfg), n)


def make_train_iter(
    data_cfg: Any,
    tasks: TaskArg,
    *,
    global_batch_size: int,
    seed: int,
    worker_count: int | None = None,
) -> grain.DatasetIterator:
  """Checkpointable iterator (get_state/set_state) of process-local batches.

  Save/restore it with orbax via grain.checkpoint.CheckpointSave/Restore.
  """
  source = sources.load(data_cfg, task_names(tasks),
                        data_cfg.get("train_split", "train"))
  return iter(train_dataset(
      source, tasks, data_cfg, global_batch_size=global_batch_size,
      seed=seed, worker_count=worker_count))


def make_eval_iter(
    data_cfg: Any,
    tasks: TaskArg,
    *,
    split: str | None = None,
    global_batch_size: int,
    keep: Sequence[str] = (),
) -> EvalData:
  """The whole `split` (default data.eval_split) once, in order, per process.

  Iterate it again for the next evaluation; len() is the batch count.
  """
  split = split or data_cfg.get("eval_split", "validation")
  source = sources.load(data_cfg, task_names(tasks), split)
  return eval_dataset(source, tasks, data_cfg,
                      global_batch_size=global_batch_size, keep=keep)


def num_examples(data_cfg: Any, split: str | None = None) -> int:
  """Examples in `split` (default data.train_split), all processes together."""
  builder = sources.get_builder(data_cfg)
  sources.prepare(builder)
  split = split or data_cfg.get("train_split", "train")
  return builder.info.splits[split].num_examples
