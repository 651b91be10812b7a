"""Generic PyTorch -> Flax NNX weight conversion helpers.

Loading never executes code from the file: ``.pth`` goes through
``torch.load(weights_only=True)`` (PyTorch's restricted unpickler, which
refuses arbitrary globals such as ``os.system``), ``.safetensors`` and
``.npz`` (``allow_pickle=False``) hold plain arrays.

Conversion is driven by the target model: each NNX variable path
(``blocks/0/attn/qkv/kernel``) is turned into a torch key
(``blocks.0.attn.qkv.weight``) by a per-model ``rename`` hook, the array is
re-laid out by the type of the module holding it (Linear ``[out, in]`` ->
``[in, out]``, Conv ``OIHW`` -> ``HWIO``, ConvTranspose ``[in, out, kh, kw]``
-> flipped ``HWIO``) and shape-checked; missing and unexpected keys are
reported by name.
"""

from __future__ import annotations

import logging
import pathlib
import re
from typing import Callable, Iterable, Mapping

from flax import nnx
import numpy as np

StateDict = dict[str, np.ndarray]

# Flax leaf name -> torch leaf name.
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias",
         "mean": "running_mean", "var": "running_var"}
# Buffers that never have a Flax counterpart.
ALWAYS_IGNORED = (r"(^|\.)num_batches_tracked$",)


class ConversionError(ValueError):
  """Missing/unexpected/mis-shaped keys; the message lists all of them."""


def _to_numpy(x) -> np.ndarray:
  if hasattr(x, "detach"):  # torch.Tensor
    x = x.detach().cpu()
    if str(x.dtype) == "torch.bfloat16":
      x = x.float()
    return x.numpy()
  return np.asarray(x)


def _flatten_nested(obj, prefix: str = "") -> StateDict:
  out = {}
  for k, v in obj.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten_nested(v, key + "."))
    elif hasattr(v, "shape"):
      out[key] = _to_numpy(v)
  return out


def load_state_dict(path: str | pathlib.Path, *,
                    key: str | None = None) -> StateDict:
  """Reads a checkpoint file into ``{torch key: np.ndarray}`` safely.

  Args:
    path: ``.pth``/``.pt``/``.bin`` (torch, weights only), ``.safetensors``
      or ``.npz`` (e.g. the original ViT release; keys kept as stored).
    key: sub-dict of a torch checkpoint holding the weights (``"model"``,
      ``"state_dict"``); by default the first of those present, else the
      whole object.
  """
  path = pathlib.Path(path)
  suffix = path.suffix.lower()
  if suffix == ".safetensors":
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
    return dict(safetensors.numpy.load_file(str(path)))
  if suffix == ".npz":
    with np.load(path, allow_pickle=False) as z:
      return {k: np.asarray(z[k]) for k in z.files}
  import torch  # pylint: disable=g-import-not-at-top
  try:
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:  # pickle.UnpicklingError and friends
    raise ConversionError(
        f"refusing to load {path}: it is not a plain weights-only "
        f"checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from e
  if key is None:
    key = next((k for k in ("model", "state_dict", "model_state")
                if isinstance(obj, Mapping) and k in obj), None)
  if key is not None:
    obj = obj[key]
  if not isinstance(obj, Mapping):
    raise ConversionError(f"{path}: expected a dict of tensors, got "
                          f"{type(obj).__name__}")
  return _flatten_nested(obj)


def strip_prefix(state_dict: Mapping[str, np.ndarray],
                 prefix: str = "module.") -> StateDict:
  """Drops ``prefix`` (DDP's ``module.``) from every key that has it."""
  return {(k[len(prefix):] if k.startswith(prefix) else k): v
          for k, v in state_dict.items()}


def linear_kernel(w: np.ndarray) -> np.ndarray:
  return np.transpose(w)


def conv_kernel(w: np.ndarray) -> np.ndarray:
  """``[O, I/groups, kh, kw]`` -> ``[kh, kw, I/groups, O]``."""
  return np.transpose(w, (2, 3, 1, 0))


def conv_transpose_kernel(w: np.ndarray) -> np.ndarray:
  """ConvTranspose2d ``[I, O, kh, kw]`` -> the equivalent direct-conv kernel.

  ``nnx.ConvTranspose`` (``transpose_kernel=False``) convolves the
  zero-dilated input with an unflipped ``[kh, kw, I, O]`` kernel, so the
  torch kernel is flipped spatially.
  """
  return np.transpose(w[:, :, ::-1, ::-1], (2, 3, 0, 1))


def _layout(module: object, leaf: str) -> Callable[[np.ndarray], np.ndarray]:
  if leaf != "kernel":
    return lambda w: w
  if isinstance(module, nnx.ConvTranspose):
    return conv_transpose_kernel
  if isinstance(module, nnx.Conv):
    return conv_kernel
  if isinstance(module, nnx.Linear):
    return linear_kernel
  return lambda w: w


def torch_key(path: tuple) -> str:
  """NNX path -> default torch key: ``('a', 0, 'kernel')`` -> ``a.0.weight``."""
  *mods, leaf = (str(p) for p in path)
  return ".".join(mods + [_LEAF.get(leaf, leaf)])


def _matches(key: str, patterns: Iterable[str]) -> bool:
  return any(re.search(p, key) for p in patterns)


def convert(state_dict: Mapping[str, np.ndarray], model: nnx.Module, *,
            rename: Callable[[str], str] = lambda k: k,
            ignore: Iterable[str] = (), strict: bool = True,
            ) -> tuple[nnx.State, list[str]]:
  """Builds ``model``'s state from a torch state_dict.

  Args:
    state_dict: torch key -> array.
    model: target; its variables define the keys, shapes and layouts.
    rename: maps a default torch key derived from the model path
      (:func:`torch_key`) to the actual key in ``state_dict``.
    ignore: regexes of torch keys that are allowed to stay unused (e.g. the
      reference's dead parameters); ``num_batches_tracked`` always is.
    strict: raise :class:`ConversionError` listing every missing,
      unexpected or mis-shaped key (otherwise missing keys keep the model's
      values and the rest is logged).

  Returns:
    ``(state, ignored)``: an ``nnx.State`` to ``nnx.update(model, state)``
    with, and the sorted torch keys that were present but not used.
  """
  modules = dict(nnx.iter_modules(model))
  ignore = tuple(ignore) + ALWAYS_IGNORED
  used, missing, bad, new = set(), [], [], []
  for path, var in nnx.to_flat_state(nnx.state(model)):
    key = rename(torch_key(path))
    if key not in state_dict:
      missing.append(f"{key} (for {'/'.join(map(str, path))})")
      new.append((path, var))
      continue
    used.add(key)
    value = _layout(modules.get(path[:-1]), str(path[-1]))(
        _to_numpy(state_dict[key]))
    if value.shape != tuple(var.shape):
      bad.append(f"{key}: checkpoint {tuple(value.shape)} vs model "
                 f"{tuple(var.shape)} after layout change")
      new.append((path, var))
      continue
    new.append((path, var.replace(np.asarray(value, dtype=var.dtype))))
  rest = sorted(set(state_dict) - used)
  ignored = [k for k in rest if _matches(k, ignore)]
  unexpected = [k for k in rest if not _matches(k, ignore)]
  problems = ([f"missing: {m}" for m in missing] +
              [f"unexpected: {u}" for u in unexpected] +
              [f"shape: {b}" for b in bad])
  if problems and strict:
    raise ConversionError(f"{len(problems)} conversion problem(s):\n  " +
                          "\n  ".join(problems))
  for p in problems:
    logging.warning("convert: %s", p)
  if ignored:
    logging.info("convert: ignored %d checkpoint keys: %s", len(ignored),
                 ", ".join(ignored))
  return nnx.from_flat_state(new), ignored


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys cubic convolution weights of the 4 taps at offsets -1, 0, 1, 2."""
  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1
  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """``[n_out, n_in]`` matrix of torch bicubic (A=-0.75, align_corners=False).

  Matches ``F.interpolate(mode='bicubic', size=...)`` without antialias:
  source coordinate ``(i + 0.5) * n_in / n_out - 0.5`` (not clamped), taps
  clamped to the border.
  """
  scale = n_in / n_out
  src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
  base = np.floor(src)
  w = _cubic_weights(src - base)
  m = np.zeros((n_out, n_in), np.float64)
  for j in range(4):
    idx = np.clip(base.astype(np.int64) - 1 + j, 0, n_in - 1)
    np.add.at(m, (np.arange(n_out), idx), w[:, j])
  return m


def resize_bicubic(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes ``[h, w, C]`` to ``[*size, C]`` with torch bicubic semantics."""
  h, w, _ = grid.shape
  mh, mw = bicubic_matrix(h, size[0]), bicubic_matrix(w, size[1])
  out = np.einsum("oh,hwc->owc", mh, grid.astype(np.float64))
  out = np.einsum("pw,owc->opc", mw, out)
  return out.astype(grid.dtype)


def resize_pos_embed(pos: np.ndarray, grid: tuple[int, int], *,
                     num_prefix_tokens: int = 1,
                     old_grid: tuple[int, int] | None = None) -> np.ndarray:
  """``[1, P + h*w, C]`` -> ``[1, P + gh*gw, C]`` keeping the P prefix tokens.

  ``old_grid`` defaults to a square grid (timm/ViT releases).
  """
  prefix, tokens = pos[:, :num_prefix_tokens], pos[0, num_prefix_tokens:]
  if old_grid is None:
    side = int(round(np.sqrt(tokens.shape[0])))
    if side * side != tokens.shape[0]:
      raise ConversionError(f"pos_embed with {tokens.shape[0]} tokens is "
                            "not square; pass old_grid")
    old_grid = (side, side)
  if tuple(old_grid) == tuple(grid):
    return pos
  new = resize_bicubic(tokens.reshape(*old_grid, -1), grid)
  return np.concatenate([prefix, new.reshape(1, -1, new.shape[-1])], axis=1)
