"""The CTAL decoder: the small reference CTALNet (CNN, identity backbone)
against the ``ctal`` golden through the state-dict converter (atol 1e-5,
float32, highest precision; sizes, heads and task order read from the
golden), and tiny HRNet / Swin-V2 CTAL models built through the plugin
registry (forward + backward, deep-supervision outputs, size errors)."""

from __future__ import annotations

import re

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax.convert import torch_utils
from mtdense_jax.models import multitask
from mtdense_jax.models.decoders import ctal
from mtdense_jax.models.encoders import hrnet

ATOL = 1e-5


def _golden_decoder(npz, meta, mode):
  pre = "params/ctalnet_cnn/"
  sd = {k[len(pre):]: v for k, v in npz.items() if k.startswith(pre)}
  tasks = list(meta["tasks"])
  x = npz["inputs/ctalnet_cnn/x"]
  _, cin, h, w = x.shape
  n_out = {t: sd[f"heads.{t}.2.weight"].shape[0] for t in tasks}
  gamma = float(re.search(r"--gamma ([0-9.e-]+)", meta["generator"])[1])
  dec = ctal.CTALDecoder(
      cin, n_out, (h, w), (h, w), variant="cnn", fuse=False, gamma=gamma,
      initial_channels=sd[f"initial_task_prediction_heads.layers.{tasks[0]}"
                          ".1.conv3.weight"].shape[0],
      channels=sd[f"affinity_learning_module.conv_in.{tasks[0]}.weight"]
      .shape[0], single_task=False, affinity_mode=mode, affinity_chunk=8,
      rngs=nnx.Rngs(0), dtype=jnp.float32)
  nnx.update(dec, ctal.from_torch(sd, dec))
  dec.eval()
  return dec, tasks, jnp.asarray(np.transpose(x, (0, 2, 3, 1)))


@pytest.mark.parametrize("mode", ["direct", "fused"])
def test_ctalnet_cnn_golden(golden, mode):
  npz, meta = golden("ctal")
  with jax.default_matmul_precision("highest"):
    dec, tasks, x = _golden_decoder(npz, meta, mode)
    n = sum(v.size for v in jax.tree.leaves(nnx.state(dec, nnx.Param)))
    assert n == meta["param_counts"]["ctalnet_cnn"]
    out = nnx.jit(lambda d, x: d({"maps": [x]}))(dec, x)
  for t in tasks:
    for got, key in ((out["final"][t], t),
                     (out["aux"]["initial"][t], f"initial_{t}")):
      np.testing.assert_allclose(
          np.transpose(np.asarray(got), (0, 3, 1, 2)),
          npz[f"outputs/ctalnet_cnn/{key}"], atol=ATOL, rtol=0, err_msg=key)


def test_converter_reports_missing_and_unexpected_keys(golden):
  npz, meta = golden("ctal")
  dec, tasks, _ = _golden_decoder(npz, meta, "fused")
  pre = "params/ctalnet_cnn/"
  sd = {k[len(pre):]: v for k, v in npz.items() if k.startswith(pre)}
  sd.pop(f"heads.{tasks[0]}.2.bias")
  sd["heads.extra.weight"] = np.zeros(1)
  with pytest.raises(ValueError, match=r"heads\.\w+\.2\.bias[\s\S]*"
                                       r"heads\.extra\.weight"):
    ctal.from_torch(sd, dec)


TASKS = {"semseg": 5, "depth": 1, "normals": 3}
TOY = ("tests.toy_cnn_encoder", "toy", {"width": 4})
HRNET_TINY = ("hrnet", "W18-small-v2", dict(
    fuse=True, stem_planes=8, modules=(1, 1, 1), blocks=1,
    channels=(4, 8, 8, 8)))
SWIN_TINY = ("swin_v2", "T", dict(
    embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
    window_size=4, out_norms="last"))


def _build(enc, img, **dec_kw):
  encoder, enc_variant, enc_kw = enc
  cfg = dict(encoder=encoder, variant=enc_variant, decoder="ctal",
             encoder_kw=enc_kw,
             decoder_kw=dict(initial_channels=16, channels=8, **dec_kw))
  return multitask.build_model(cfg, task_outputs=TASKS, img_size=img,
                               rngs=nnx.Rngs(0))


@nnx.jit
def _forward_backward(model, x):
  def loss(m):
    out = m(x, rngs=nnx.Rngs(dropout=1))
    heads = list(out["final"].values()) + list(out["aux"]["initial"].values())
    return sum(jnp.mean(v ** 2) for v in heads), out
  grads, out = nnx.grad(loss, has_aux=True)(model)
  return out, grads


def _check_model(model, img, hw):
  alm = model.decoder.affinity_learning_module
  assert alm.spatial_att.hw == hw
  assert alm.spatial_att.fusion.kernel.shape == (hw[0] * hw[1], 3, 3, 3)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, *img, 3)),
                  jnp.float32)
  out, grads = _forward_backward(model, x)
  for t, n in TASKS.items():
    assert out["final"][t].shape == out["aux"]["initial"][t].shape == (
        2, *img, n)
  for path, g in nnx.to_flat_state(grads):
    assert np.all(np.isfinite(np.asarray(g[...]))), path
  g = grads["decoder"]["affinity_learning_module"]["spatial_att"]["fusion"]
  assert np.abs(np.asarray(g["kernel"][...])).max() > 0
  # Another image size gives another feature size: one clear error (at
  # trace time, so nothing runs).
  with pytest.raises(ValueError, match="config.data.image_size"):
    nnx.eval_shape(lambda m, x: m(x), model,
                   jnp.zeros((1, 2 * img[0], img[1], 3)))


def test_ctal_cnn_decoder_through_registry():
  """Forward + backward of the CNN variant on the stride-4 map."""
  _check_model(_build(TOY, (32, 64), variant="cnn", feature_map=0),
               (32, 64), (8, 16))


def test_ctal_transformer_decoder_shapes():
  """The transformer variant (DeepLab heads) traced only: its compile is
  the slow test below."""
  model = _build(TOY, (32, 64), variant="transformer", fuse=False)
  assert model.decoder.affinity_learning_module.spatial_att.hw == (1, 2)
  out = nnx.eval_shape(lambda m, x: m(x, rngs=nnx.Rngs(dropout=0)), model,
                       jnp.zeros((2, 32, 64, 3)))
  for t, n in TASKS.items():
    assert out["final"][t].shape == out["aux"]["initial"][t].shape == (
        2, 32, 64, n)


@pytest.mark.slow   # HRNet / Swin-V2 / DeepLab compiles: minutes on 2 cores.
@pytest.mark.parametrize("enc,img,dec_kw,hw", [
    (TOY, (32, 64), {"variant": "transformer", "fuse": False}, (1, 2)),
    (HRNET_TINY, (32, 64), {"variant": "cnn"}, (8, 16)),
    (SWIN_TINY, (64, 64), {"variant": "transformer", "fuse": False}, (2, 2)),
])
def test_ctal_full_models_forward_backward(enc, img, dec_kw, hw):
  _check_model(_build(enc, img, **dec_kw), img, hw)


@pytest.mark.parametrize("variant", ["cnn", "transformer"])
def test_single_task_baseline_has_no_affinity(variant):
  model = _build(TOY, (32, 64), variant=variant, single_task=True,
                 feature_map=0 if variant == "cnn" else -1)
  assert not hasattr(model.decoder, "affinity_learning_module")
  out = nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros((1, 32, 64, 3)))
  assert out["aux"] == {} and out["final"]["depth"].shape == (1, 32, 64, 1)


def test_unknown_variant_names_the_key():
  with pytest.raises(ValueError, match="decoder_kw.variant"):
    _build(TOY, (32, 64), variant="vit")


def _export(module, rename, prefix):
  """Our state as a torch-layout state dict (inverse of torch_utils)."""
  mods = dict(nnx.iter_modules(module))
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(module)):
    w = np.asarray(var[...])
    owner = mods.get(path[:-1])
    if str(path[-1]) == "kernel" and isinstance(owner, nnx.ConvTranspose):
      w = np.transpose(w, (2, 3, 0, 1))[:, :, ::-1, ::-1]
    elif str(path[-1]) == "kernel" and isinstance(owner, nnx.Conv):
      w = np.transpose(w, (3, 2, 0, 1))
    out[prefix + rename(torch_utils.torch_key(path))] = w
  return out


def test_reference_checkpoint_converter_round_trip():
  """``--from ctal``: backbone.0 (HRNet) + backbone.1.last_layer (fuse) +
  decoder keys of a reference CTALNet checkpoint land where they belong."""
  src = _build(HRNET_TINY, (32, 64), variant="cnn")
  sd = _export(src.encoder, hrnet._rename, "backbone.0.")
  sd.update(_export(src.decoder, lambda k: ctal.torch_name("decoder." + k),
                    ""))
  assert "backbone.1.last_layer.0.weight" in sd
  assert "affinity_learning_module.spatial_att.fusion.weight" in sd

  def build(task_outputs):
    assert task_outputs == TASKS
    cfg = dict(encoder="hrnet", variant="W18-small-v2",
               encoder_kw=HRNET_TINY[2], decoder="ctal",
               decoder_kw=dict(initial_channels=16, channels=8))
    return multitask.build_model(cfg, task_outputs=task_outputs,
                                 img_size=(32, 64), rngs=nnx.Rngs(1))

  got = ctal.CONVERTERS["ctal"]({"module." + k: v for k, v in sd.items()},
                                tasks=tuple(TASKS), build=build)
  for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(src)),
                               nnx.to_flat_state(nnx.state(got))):
    np.testing.assert_array_equal(a[...], b[...], err_msg=str(path))
