"""Imports the upstream PyTorch models (timm) that parity tests compare to.

timm imports torchvision at package import time only for helpers the models
under test never call (``FrozenBatchNorm2d``, transforms, FX feature
extraction), and PyPI's torchvision does not load beside the pinned torch
2.13.0 ('operator torchvision::nms does not exist'). So while timm is
imported, ``torchvision`` resolves to a placeholder package whose attributes
are inert names; the timm model code that runs is the real one.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types

import pytest


class _Inert(type):
  def __getattr__(cls, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return name


class _Placeholder(types.ModuleType):
  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return _Inert(name, (object,), {})


class _Finder:
  def find_spec(self, name, path, target=None):
    del path, target
    if name == "torchvision" or name.startswith("torchvision."):
      return importlib.machinery.ModuleSpec(name, self, is_package=True)
    return None

  def create_module(self, spec):
    return _Placeholder(spec.name)

  def exec_module(self, module):
    module.__path__ = []


def timm_module(name: str):
  """``timm.models.<name>``, or skips the test when timm is not installed."""
  pytest.importorskip("torch")
  if importlib.util.find_spec("timm") is None:
    pytest.skip("timm is not installed (pip install --no-deps -r "
                "requirements-upstream.txt)")
  finder = _Finder()
  sys.meta_path.insert(0, finder)
  try:
    return importlib.import_module(f"timm.models.{name}")
  finally:
    sys.meta_path.remove(finder)


def converted(build, convert, state_dict):
  """``build()`` traced abstractly (no initialiser runs: on 2 shared cores
  a concrete init costs more than the test) and filled by ``convert``,
  which must then supply every variable (a strict converter does)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  model = nnx.eval_shape(build)
  nnx.update(model, convert(state_dict, model))
  return model


def run(model, x):
  """One jitted forward (one compile instead of op-by-op dispatch)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  return nnx.jit(lambda m, a: m(a))(model, x)


def state_dict(module) -> dict:
  """A torch module's state_dict as numpy arrays (the converters' input)."""
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def assert_stages_close(ours, ref, rtol: float) -> None:
  """Our {stride: map} against the reference's stage outputs (in stride
  order): same shapes, max |err| / max |ref| below `rtol` per stage."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  assert sorted(ours) == [4, 8, 16, 32]
  for (stride, got), want in zip(sorted(ours.items()), ref):
    got = np.asarray(got)
    assert got.shape == want.shape, stride
    err = np.abs(got - want).max() / np.abs(want).max()
    print(f"stride {stride}: max |err| / max |ref| = {err:.1e}")
    assert err < rtol, f"stride {stride}: relative error {err:.2e}"
