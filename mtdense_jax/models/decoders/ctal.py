"""CTAL decoder (Sinodinos & Armanfard, "Cross-Task Affinity Learning for
Multitask Dense Scene Predictions", WACV 2025).

Port of ``CTALNet`` from Dimitri-Sinodinos/CTAL @ b2d3bb9
(``code_cnn/models/ctal.py``, ``code_transformer/models/ctal.py``,
``models/aspp.py``, ``models/hrnet.py: HighResolutionFuse``); spec in
``shared/notes/methods.md`` b.1-b.2. Module names mirror the reference so
:func:`from_torch` is a short rename.

One encoder map (the last, or ``feature_map``) ->
  [``fuse``: 1x1 conv + BN + ReLU, the CNN recipe's HRNet fuse layer] ->
  per task two ResNet Bottlenecks (planes 64) = task feature -> 1x1 conv ->
  resize = ``aux["initial"]`` (deep supervision) ->
  AffinityLearningModule (256 -> 128, x2 upsampling) ->
  per task final head: two Bottlenecks (planes 32) + 1x1 conv ("cnn") or a
  DeepLabV3 head ("transformer") -> resize = ``final``.
All resizes are bilinear, align_corners=False, no antialiasing.

The affinity module is tied to one feature resolution, (H/s, W/s) of
``config.data.image_size`` at the map's stride s: 72x96 (n = 6912) for the
CNN at 288x384 (stride 4), 16x16 (n = 256) for Swin-V2 at 512x512 (stride
32). With ``single_task=True`` the decoder is the reference's STL head
instead (no initial heads, no affinity): per task the fuse layer and a 1x1
conv (``HighResolutionHead``, "cnn") or a DeepLabV3 head on the encoder map.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax.models import features as feats_lib
from mtdense_jax.models.encoders import hrnet
from mtdense_jax.models.layers import common
from mtdense_jax.models.layers import ctal_affinity

Capture = dict[str, jax.Array] | None


class Dropout(nnx.Module):
  """``nn.Dropout(rate)``: identity in eval mode or without call rngs."""

  def __init__(self, rate: float):
    self.rate = float(rate)
    self.deterministic = False

  def __call__(self, x: jax.Array, rngs: Any = None) -> jax.Array:
    if self.deterministic or rngs is None or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(common.next_key(rngs), keep, x.shape)
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), 0).astype(x.dtype)


def _cbr(cin: int, cout: int, k: int, *, dilation: int = 1, bias=False,
         **kw) -> nnx.Dict:
  """``Sequential(conv, BN, ReLU)`` with torch keys ``0``, ``1``."""
  return nnx.Dict({"0": common.conv(cin, cout, k, padding=dilation * (k // 2),
                                    dilation=dilation, bias=bias, **kw),
                   "1": common.batch_norm(cout, **kw)})


def _run_cbr(seq: nnx.Dict, x: jax.Array) -> jax.Array:
  return jax.nn.relu(seq["1"](seq["0"](x)))


class ASPP(nnx.Module):
  """DeepLabV3 ASPP (``models/aspp.py``): 1x1, three dilated 3x3 (rates
  12/24/36) and image pooling branches of 256 ch, concatenated, 1x1
  projection + BN + ReLU + Dropout(0.5)."""

  def __init__(self, cin: int, rates: Sequence[int] = (12, 24, 36), *,
               width: int = 256, **kw):
    convs = {"0": _cbr(cin, width, 1, **kw)}
    for i, r in enumerate(rates):
      convs[str(i + 1)] = _cbr(cin, width, 3, dilation=r, **kw)
    # ASPPPooling: index 0 is the (parameter-free) AdaptiveAvgPool2d.
    pool = _cbr(cin, width, 1, **kw)
    convs[str(len(rates) + 1)] = nnx.Dict({"1": pool["0"], "2": pool["1"]})
    self.convs = nnx.Dict(convs)
    self.project = _cbr((len(rates) + 2) * width, width, 1, **kw)
    self.dropout = Dropout(0.5)

  def __call__(self, x: jax.Array, rngs: Any = None) -> jax.Array:
    n = len(self.convs)
    res = [_run_cbr(self.convs[str(i)], x) for i in range(n - 1)]
    pool = self.convs[str(n - 1)]
    p = jnp.mean(x, axis=(1, 2), keepdims=True)
    p = jax.nn.relu(pool["2"](pool["1"](p)))
    # Bilinear upsampling of a 1x1 map is a broadcast.
    res.append(jnp.broadcast_to(p, x.shape[:3] + p.shape[3:]))
    y = _run_cbr(self.project, jnp.concatenate(res, axis=-1))
    return self.dropout(y, rngs)


class DeepLabHead(nnx.Module):
  """``DeepLabHead(cin, n)``: ``0`` ASPP, ``1`` 3x3 conv, ``2`` BN, ReLU,
  ``4`` 1x1 conv (torch Sequential indices)."""

  def __init__(self, cin: int, n_out: int, **kw):
    self.layers = nnx.Dict({
        "0": ASPP(cin, **kw),
        "1": common.conv(256, 256, 3, padding=1, bias=False, **kw),
        "2": common.batch_norm(256, **kw),
        "4": common.conv(256, n_out, 1, **kw)})

  def __call__(self, x: jax.Array, rngs: Any = None) -> jax.Array:
    y = self.layers["0"](x, rngs)
    y = jax.nn.relu(self.layers["2"](self.layers["1"](y)))
    return self.layers["4"](y)


class BottleneckHead(nnx.Module):
  """Two Bottlenecks then a 1x1 conv (CNN final head; keys ``0``, ``1``,
  ``2``)."""

  def __init__(self, cin: int, n_out: int, **kw):
    self.layers = nnx.Dict({
        "0": hrnet.Bottleneck(cin, cin // 4, **kw),
        "1": hrnet.Bottleneck(cin, cin // 4, **kw),
        "2": common.conv(cin, n_out, 1, **kw)})

  def __call__(self, x: jax.Array, rngs: Any = None) -> jax.Array:
    del rngs
    return self.layers["2"](self.layers["1"](self.layers["0"](x)))


class InitialHeads(nnx.Module):
  """Reference ``InitialTaskPredictionModule``: per task two Bottlenecks
  (``layers.<t>.{0,1}``) -> task feature, 1x1 conv (``conv_out.<t>``) ->
  initial prediction."""

  def __init__(self, tasks: Mapping[str, int], cin: int, width: int, **kw):
    self.layers = nnx.Dict({t: nnx.Dict({
        "0": hrnet.Bottleneck(cin, width // 4, **kw),
        "1": hrnet.Bottleneck(width, width // 4, **kw)}) for t in tasks})
    self.conv_out = nnx.Dict({t: common.conv(width, n, 1, **kw)
                              for t, n in tasks.items()})

  def __call__(self, x: jax.Array) -> tuple[dict, dict]:
    feats, preds = {}, {}
    for t in self.conv_out:
      feats[t] = self.layers[t]["1"](self.layers[t]["0"](x))
      preds[t] = self.conv_out[t](feats[t])
    return feats, preds


class CTALDecoder(nnx.Module):
  """Encoder map -> {"final": {t: (B, H, W, n_t)}, "aux": {"initial": ...}}.

  ``feature_hw`` is the map's size the affinity module is built for.
  """

  def __init__(self, cin: int, task_outputs: Mapping[str, int],
               img_size: tuple[int, int], feature_hw: tuple[int, int], *,
               variant: str, fuse: bool, gamma: float,
               initial_channels: int, channels: int, single_task: bool,
               affinity_mode: str, affinity_chunk: int, rngs: nnx.Rngs,
               dtype: Any, feature_map: int = -1):
    kw = dict(rngs=rngs, dtype=dtype)
    self.tasks = tuple(task_outputs)
    self.img_size = tuple(img_size)
    self.feature_map, self.dtype = feature_map, dtype
    self.single_task = single_task
    self.fuse = _cbr(cin, cin, 1, bias=True, **kw) if fuse else None
    if single_task:
      self.heads = nnx.Dict({
          t: (DeepLabHead(cin, n, **kw) if variant == "transformer"
              else common.conv(cin, n, 1, **kw))
          for t, n in task_outputs.items()})
      return
    self.initial_task_prediction_heads = InitialHeads(
        task_outputs, cin, initial_channels, **kw)
    self.affinity_learning_module = ctal_affinity.AffinityLearningModule(
        self.tasks, initial_channels, channels, feature_hw, gamma,
        variant=variant, mode=affinity_mode, chunk=affinity_chunk,
        size_key="config.data.image_size", **kw)
    head = DeepLabHead if variant == "transformer" else BottleneckHead
    self.heads = nnx.Dict({t: head(channels, n, **kw)
                           for t, n in task_outputs.items()})

  def __call__(self, feats: feats_lib.Features | list[jax.Array], *,
               rngs: Any = None, capture: Capture = None) -> dict[str, Any]:
    x = feats_lib.as_features(feats)["maps"][self.feature_map]
    x = x.astype(self.dtype)
    if self.fuse is not None:
      x = _run_cbr(self.fuse, x)

    def full(y):
      return common.resize_bilinear(y, self.img_size).astype(jnp.float32)

    if self.single_task:
      final = {t: full(h(x, rngs) if isinstance(h, DeepLabHead) else h(x))
               for t, h in self.heads.items()}
      return {"final": final, "aux": {}}
    task_feats, initial = self.initial_task_prediction_heads(x)
    refined = self.affinity_learning_module(task_feats, capture=capture)
    final = {t: full(self.heads[t](refined[t], rngs)) for t in self.tasks}
    return {"final": final,
            "aux": {"initial": {t: full(initial[t]) for t in self.tasks}}}


def consumes(**decoder_kw) -> feats_lib.Consumes:
  """Any maps: the decoder reads one (``feature_map``, default the last)."""
  del decoder_kw
  return feats_lib.Consumes()


def build(*, encoder: nnx.Module, task_outputs: Mapping[str, int],
          img_size: tuple[int, int], rngs: nnx.Rngs, dtype: Any = jnp.float32,
          variant: str = "cnn", fuse: bool = True, gamma: float = 0.05,
          initial_channels: int = 256, channels: int = 128,
          single_task: bool = False, feature_map: int = -1,
          affinity_mode: str = "fused",
          affinity_chunk: int = 1024) -> CTALDecoder:
  """Builds CTAL's decoder on one map of ``encoder``.

  Args:
    encoder: provides the map (stride s, channels) the decoder reads.
    task_outputs: head channels per task; their order is the affinity
      interleave order (the reference's ``TASKS.NAMES``).
    img_size: (H, W); the affinity module is built for (H/s, W/s).
    rngs: initialisation RNGs.
    dtype: compute dtype.
    variant: "cnn" (1x1 conv_in, Bottleneck final heads) or "transformer"
      (conv_in + BN + ReLU, DeepLabV3 final heads).
    fuse: the HRNet recipe's 1x1 conv + BN + ReLU on the map first.
    gamma: affinity blend weight (0.05 in every reference config).
    initial_channels: task feature width of the initial heads (256).
    channels: affinity module width (128).
    single_task: the reference's STL model instead (see module docstring).
    feature_map: index of the encoder map to read.
    affinity_mode: "fused" (chunked, memory ~ chunk * n) or "direct" (the
      reference's stacked T n^2 affinities and grouped conv).
    affinity_chunk: query rows per chunk in "fused" mode.
  """
  if variant not in ("cnn", "transformer"):
    raise ValueError(f"config.model.decoder_kw.variant={variant!r}; one of "
                     "('cnn', 'transformer')")
  produced = feats_lib.spec_of(encoder)
  m = produced.maps[feature_map]
  if img_size[0] % m.stride or img_size[1] % m.stride:
    raise ValueError(f"config.data.image_size {tuple(img_size)} is not "
                     f"divisible by the CTAL input map's stride {m.stride}")
  hw = (img_size[0] // m.stride, img_size[1] // m.stride)
  return CTALDecoder(m.channels, dict(task_outputs), img_size, hw,
                     variant=variant, fuse=fuse, gamma=gamma,
                     initial_channels=initial_channels, channels=channels,
                     single_task=single_task, affinity_mode=affinity_mode,
                     affinity_chunk=affinity_chunk, feature_map=feature_map,
                     rngs=rngs, dtype=dtype)


# ---------------------------------------------------------------- converters

_RENAMES = (
    (r"\.downsample\.layers\.", ".downsample."),   # hrnet.ConvBN
    (r"^decoder\.heads\.([^.]+)\.layers\.", r"heads.\1."),
    (r"^decoder\.fuse\.", "backbone.1.last_layer."),
    (r"^decoder\.", ""),
)


def torch_name(key: str) -> str:
  """Default key of a ``MultiTaskModel`` decoder path (``decoder.*``) ->
  reference ``CTALNet`` state_dict key. The backbone keeps its own
  converter (``hrnet.from_torch`` / ``swin_v2``)."""
  for pattern, repl in _RENAMES:
    key = re.sub(pattern, repl, key)
  return key


def from_torch(state_dict: Mapping[str, np.ndarray], decoder: CTALDecoder, *,
               prefix: str = "", strict: bool = True) -> nnx.State:
  """Reference ``CTALNet`` decoder weights (keys without the ``backbone.``
  part; the fuse layer from ``backbone.1.last_layer.``) -> state of
  ``decoder``. ``prefix`` (e.g. ``module.``) is stripped first."""
  from mtdense_jax.convert import torch_utils  # pylint: disable=g-import-not-at-top
  sd = {k[len(prefix):]: np.asarray(v) for k, v in state_dict.items()
        if k.startswith(prefix)}
  state, _ = torch_utils.convert(
      sd, decoder, rename=lambda k: torch_name("decoder." + k),
      ignore=(r"^backbone\.0\.", r"^backbone\.1\.(?!last_layer\.)"),
      strict=strict)
  return state


def _backbone_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
  """The reference backbone's keys as its own converter expects them:
  HRNet ``backbone.0.*`` as is; torchvision Swin ``Sequential(features,
  norm, permute)`` ``backbone.0.N.*`` -> ``features.N.*``, ``backbone.1.*``
  -> ``norm.*``."""
  sd = {k[len("backbone."):]: v for k, v in state_dict.items()
        if k.startswith("backbone.")}
  if "1.weight" in sd:   # Swin: the final LayerNorm sits at index 1.
    return {re.sub(r"^0\.", "features.", re.sub(r"^1\.", "norm.", k)): v
            for k, v in sd.items()}
  return {k[2:]: v for k, v in sd.items() if k.startswith("0.")}


def checkpoint_task_outputs(state_dict: Mapping[str, np.ndarray],
                            tasks: Sequence[str]) -> dict[str, int]:
  """Head sizes read from the initial heads' 1x1 convs."""
  out = {}
  for t in tasks:
    key = f"initial_task_prediction_heads.conv_out.{t}.weight"
    if key not in state_dict:
      raise ValueError(f"config task {t!r} has no head in the checkpoint "
                       f"({key})")
    out[t] = int(np.shape(state_dict[key])[0])
  return out


def _from_reference(state_dict, *, tasks, build):
  """A trained reference ``CTALNet`` (HRNet or torchvision Swin-V2 backbone
  included); ``tasks`` must be in the checkpoint's ``TASKS.NAMES`` order
  (the affinity interleave)."""
  from mtdense_jax.convert import torch_utils  # pylint: disable=g-import-not-at-top
  sd = torch_utils.strip_prefix(state_dict, "module.")
  model = build(checkpoint_task_outputs(sd, tuple(tasks)))
  enc_mod = type(model.encoder).__module__
  backbone = _backbone_dict(sd)
  if enc_mod.endswith("swin_v2"):
    from mtdense_jax.models.encoders import swin_v2  # pylint: disable=g-import-not-at-top
    nnx.update(model.encoder, swin_v2.from_torchvision(backbone,
                                                       model.encoder))
  else:
    nnx.update(model.encoder, hrnet.from_torch(backbone, model.encoder))
  nnx.update(model.decoder, from_torch(sd, model.decoder))
  return model


# python -m mtdense_jax.convert --from ctal: a reference CTALNet .pth.
CONVERTERS = {"ctal": _from_reference}
