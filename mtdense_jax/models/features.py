"""The encoder -> decoder contract: what an encoder produces, what a decoder
consumes, and the check that runs before a decoder is built.

An encoder's ``__call__`` returns a features dict (a plain pytree, so it
crosses jit, remat and sharding untouched)::

  {"maps": [(B, H/s_i, W/s_i, C_i), ...],   # in the order of spec.maps
   # optional, as the encoder's spec.extras declares:
   "task_tokens": {task: array}, "extra_tokens": [...], "attn": [...],
   "losses": {name: scalar}}

and carries its static description as ``encoder.produces`` (a
:class:`FeatureSpec`: one named :class:`MapSpec` per map, with stride and
channels, plus the names of the extra entries). A decoder plugin declares
what it needs with a module-level ``consumes(**decoder_kw) -> Consumes``;
:func:`check` compares the two and names both plugins in its error, so a
ViT + Mask2Former-style decoder mismatch fails at build time, not as a shape
error deep inside a jit.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

Features = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class MapSpec:
  """One feature map: its name, stride w.r.t. the input, channels."""
  name: str
  stride: int
  channels: int


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """Static description of an encoder's output (hashable: lives in the
  graphdef). ``extras`` names the non-map entries of the features dict."""
  maps: tuple[MapSpec, ...]
  extras: tuple[str, ...] = ()

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(m.name for m in self.maps)

  @property
  def strides(self) -> tuple[int, ...]:
    return tuple(m.stride for m in self.maps)

  @property
  def channels(self) -> tuple[int, ...]:
    return tuple(m.channels for m in self.maps)

  def index(self, name: str) -> int:
    if name not in self.names:
      raise KeyError(f"no feature map {name!r}; maps are {self.names}")
    return self.names.index(name)


def spec(strides: Sequence[int], channels: Sequence[int], *,
         names: Sequence[str] | None = None,
         extras: Sequence[str] = ()) -> FeatureSpec:
  """A spec from parallel lists; maps are named ``tap0, tap1, ...`` unless
  ``names`` is given."""
  if len(strides) != len(channels):
    raise ValueError(f"{len(strides)} strides but {len(channels)} channels")
  names = tuple(names or (f"tap{i}" for i in range(len(strides))))
  return FeatureSpec(tuple(MapSpec(n, int(s), int(c)) for n, s, c in
                           zip(names, strides, channels)), tuple(extras))


@dataclasses.dataclass(frozen=True)
class Consumes:
  """What a decoder needs from its encoder (unset fields: no constraint).

  Attributes:
    num_maps: exactly this many maps.
    names: maps it reads by name (e.g. a pixel decoder's last hidden state).
    strides: exactly these strides, in map order.
    same_stride: all maps at one stride (taps of a plain ViT).
    channels: exactly these channels, in map order.
    extras: non-map entries it reads ("attn", "task_tokens", ...).
  """
  num_maps: int | None = None
  names: tuple[str, ...] = ()
  strides: tuple[int, ...] | None = None
  same_stride: bool = False
  channels: tuple[int, ...] | None = None
  extras: tuple[str, ...] = ()


def problems(produced: FeatureSpec, needed: Consumes) -> list[str]:
  """Every way ``produced`` falls short of ``needed`` (empty when it fits)."""
  out = []
  n = len(produced.maps)
  if needed.num_maps is not None and n != needed.num_maps:
    out.append(f"needs {needed.num_maps} maps, gets {n} {produced.names}")
  missing = [m for m in needed.names if m not in produced.names]
  if missing:
    out.append(f"needs maps {missing}, gets {produced.names}")
  if needed.strides is not None and produced.strides != tuple(
      needed.strides):
    out.append(f"needs strides {tuple(needed.strides)}, gets "
               f"{produced.strides}")
  if needed.same_stride and len(set(produced.strides)) > 1:
    out.append(f"needs all maps at one stride, gets {produced.strides}")
  if needed.channels is not None and produced.channels != tuple(
      needed.channels):
    out.append(f"needs channels {tuple(needed.channels)}, gets "
               f"{produced.channels}")
  missing = [e for e in needed.extras if e not in produced.extras]
  if missing:
    out.append(f"needs {missing}, which the encoder does not produce "
               f"(it produces {list(produced.extras) or 'maps only'})")
  return out


def check(produced: FeatureSpec, needed: Consumes, *, encoder: str,
          decoder: str) -> None:
  """Raises one clear error naming both plugins and every mismatch."""
  found = problems(produced, needed)
  if found:
    raise ValueError(f"decoder {decoder!r} cannot read encoder {encoder!r}: "
                     + "; ".join(found) + ". Pick a matching encoder or "
                     "change config.model.encoder_kw/decoder_kw.")


def spec_of(encoder: Any) -> FeatureSpec:
  """``encoder.produces``, or a spec derived from the older
  ``out_strides``/``out_channels`` attributes."""
  produced = getattr(encoder, "produces", None)
  if produced is not None:
    return produced
  channels = tuple(encoder.out_channels)
  strides = tuple(getattr(encoder, "out_strides", ()) or ())
  if len(strides) != len(channels):
    raise ValueError(f"encoder {type(encoder).__name__} declares neither "
                     "`produces` nor out_strides matching out_channels")
  return spec(strides, channels)


def as_features(out: Any) -> Features:
  """An encoder's output as a features dict: a features dict passes through;
  a list of maps, or a ``{stride: map}`` dict (ascending stride), becomes
  ``{"maps": [...]}``."""
  if isinstance(out, Mapping) and "maps" in out:
    return dict(out)
  if isinstance(out, Mapping):
    return {"maps": [out[s] for s in sorted(out)]}
  return {"maps": list(out)}
