"""Adapters that turn a module-level weight converter into a CLI converter.

``python -m mtdense_jax.convert`` calls ``fn(state_dict, *, tasks, build)``
and expects the filled model back (see ``mtdense_jax/convert/__main__.py``).
Backbone files convert only their own weights, ``fn(state_dict, encoder) ->
nnx.State``, because window sizes and output norms depend on the built
encoder; :func:`encoder_init` bridges the two, so a backbone file lists its
sources as ``CONVERTERS = {"timm": encoder_init(from_timm), ...}`` and needs
no code of its own for the CLI.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from flax import nnx
import numpy as np

EncoderConverter = Callable[..., nnx.State]


def encoder_init(fn: EncoderConverter) -> Callable[..., nnx.Module]:
  """A CLI converter that initialises the encoder with ``fn``'s weights; the
  decoder and heads keep their fresh initialisation (sized from
  ``--task-outputs`` or the dataset's metadata)."""

  def convert(state_dict: Mapping[str, np.ndarray], *, tasks: Any,
              build: Callable[[Any], nnx.Module]) -> nnx.Module:
    del tasks  # Head sizes come from the dataset or --task-outputs.
    model = build(None)
    nnx.update(model.encoder, fn(state_dict, model.encoder))
    return model

  convert.__doc__ = f"Encoder init from {getattr(fn, '__name__', fn)}."
  return convert
