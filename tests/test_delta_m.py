"""Delta_m: MTL-PyTorch calculate_multi_task_performance golden + helper."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtdense_jax import registry
from mtdense_jax.evaluators import delta_m
from mtdense_jax.tasks import depth
from mtdense_jax.tasks import edge
from mtdense_jax.tasks import normals

# Multi-Task-Learning-PyTorch's fixed table: task -> (metric, higher_is_better).
MTL_PYTORCH_DIRECTIONS: dict[str, tuple[str, bool]] = {
    "semseg": ("mIoU", True),
    "human_parts": ("mIoU", True),
    "sal": ("mIoU", True),
    "edge": ("odsF", True),
    "depth": ("rmse", False),
    "normals": ("mean", False),
}


@pytest.mark.parametrize("db", ["nyud", "pascal"])
def test_golden(golden, db):
  npz, meta = golden("metrics_delta_m")
  mtl = json.loads(str(npz[f"delta_m/{db}/mtl_json"]))
  stl = json.loads(str(npz[f"delta_m/{db}/stl_json"]))
  ref = {r["id"]: r for r in meta["references"]}[
      f"mtl/calculate_multi_task_performance/{db}"]
  got = delta_m.delta_m(mtl, stl, MTL_PYTORCH_DIRECTIONS)
  # Sidecar: exact in float64 (rtol 1e-12).
  np.testing.assert_allclose(got, ref["outputs"], rtol=1e-12)
  np.testing.assert_allclose(
      got, npz[f"out/{ref['id']}"], rtol=1e-12)


def test_nyud_golden_with_directions_from_tasks(golden):
  """The Task-derived directions reproduce the reference on NYUD's depth,
  normals and edge (odsF present -> preferred over the edge loss)."""
  npz, meta = golden("metrics_delta_m")
  mtl = json.loads(str(npz["delta_m/nyud/mtl_json"]))
  stl = json.loads(str(npz["delta_m/nyud/stl_json"]))
  tasks = [depth.Task(), normals.Task(), edge.Task()]
  dirs = delta_m.directions_from_tasks(tasks, mtl)
  assert dirs == {"depth": ("rmse", False), "normals": ("mean", False),
                  "edge": ("odsF", True)}
  dirs["semseg"] = ("mIoU", True)  # semseg's Task is not under test here
  ref = {r["id"]: r for r in meta["references"]}[
      "mtl/calculate_multi_task_performance/nyud"]
  np.testing.assert_allclose(delta_m.delta_m(mtl, stl, dirs), ref["outputs"],
                             rtol=1e-12)


def test_directions_accept_a_name_to_task_mapping():
  tasks = {"depth": depth.Task(), "edge": edge.Task()}
  assert delta_m.directions_from_tasks(tasks) == {
      "depth": ("rmse", False), "edge": ("loss", False)}


def test_edge_falls_back_to_its_online_loss():
  dirs = delta_m.directions_from_tasks([edge.Task()],
                                       {"edge": {"loss": 0.05}})
  assert dirs == {"edge": ("loss", False)}
  assert delta_m.directions_from_tasks([edge.Task()]) == {
      "edge": ("loss", False)}


def test_signs_and_mean_against_hand_computation():
  mtl = {"a": {"x": 2.0}, "b": {"y": 3.0}}
  stl = {"a": {"x": 1.0}, "b": {"y": 4.0}}
  dirs = {"a": ("x", True), "b": ("y", False)}
  # (+1 * (2-1)/1 + -1 * (3-4)/4) / 2
  assert delta_m.delta_m(mtl, stl, dirs) == (1.0 + 0.25) / 2


def test_mismatched_tasks_raise():
  with pytest.raises(ValueError, match="same tasks"):
    delta_m.delta_m({"a": {"x": 1.0}}, {"b": {"x": 1.0}}, {"a": ("x", True)})
  with pytest.raises(ValueError, match="No Delta_m"):
    delta_m.delta_m({"a": {"x": 1.0}}, {"a": {"x": 1.0}}, {})


@pytest.mark.parametrize("db,num_classes", [
    ("nyud", {"semseg": 40}), ("pascal", {"semseg": 21, "human_parts": 7})])
def test_golden_with_every_task_from_the_registry(golden, db, num_classes):
  """All tasks built as the trainer does, with the "mtl" protocol, give the
  reference's metric table and hence its Delta_m."""
  npz, meta = golden("metrics_delta_m")
  mtl = json.loads(str(npz[f"delta_m/{db}/mtl_json"]))
  stl = json.loads(str(npz[f"delta_m/{db}/stl_json"]))
  tasks = [registry.lookup("task", name).Task(
      num_classes=num_classes.get(name), protocol="mtl") for name in mtl]
  dirs = delta_m.directions_from_tasks(tasks, mtl)
  assert dirs == {t: MTL_PYTORCH_DIRECTIONS[t] for t in mtl}
  ref = {r["id"]: r for r in meta["references"]}[
      f"mtl/calculate_multi_task_performance/{db}"]
  np.testing.assert_allclose(delta_m.delta_m(mtl, stl, dirs), ref["outputs"],
                             rtol=1e-12)
