"""Swin v1 encoder: parity with timm's SwinTransformer through our converter.

Each case builds timm's model at a tiny random configuration, converts its
state_dict with ``swin.from_timm`` and compares all four stage outputs
(float32, 'highest' matmuls) with tolerance 1e-5 relative to the output
scale (max |ref|).
"""

from __future__ import annotations

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax.convert import torch_utils
from mtdense_jax.models import multitask
from mtdense_jax.models.encoders import swin
from tests import upstream

TINY = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
            window_size=4)
RTOL = 1e-5


def _timm(img_size, **kw):
  import torch  # pylint: disable=g-import-not-at-top
  st = upstream.timm_module("swin_transformer")
  torch.manual_seed(0)
  cfg = {**TINY, **kw}
  m = st.SwinTransformer(img_size=img_size, patch_size=4, num_classes=0,
                         **cfg).eval()
  with torch.no_grad():   # non-trivial norms/biases, so a swap shows up.
    for name, p in m.named_parameters():
      if "norm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  return st, m


def _timm_stages(m, x):
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    y = m.patch_embed(torch.from_numpy(x).permute(0, 3, 1, 2))
    outs = []
    for layer in m.layers:
      y = layer(y)
      outs.append(y)
    outs[-1] = m.norm(outs[-1])
  return [o.numpy() for o in outs]


def _ours(img_size, sd, **kw):
  return upstream.converted(
      lambda: swin.build("T", img_size=img_size, rngs=nnx.Rngs(1),
                         out_norms="last", **{**TINY, **kw}),
      swin.from_timm, sd)


@pytest.mark.parametrize("img_size", [
    (64, 64),    # every window full; stage 3 window clipped to 2x2
    (64, 96),    # non-square: stage 2 pads 6 -> 8 and shifts, 2x3 windows
    (40, 56),    # 10x14 pads to 12x16; odd 5x7 merges with padding
])
def test_parity_with_timm(img_size):
  _, m = _timm(img_size)
  x = np.random.RandomState(0).randn(2, *img_size, 3).astype(np.float32)
  ours = upstream.run(_ours(img_size, upstream.state_dict(m)), x)
  upstream.assert_stages_close(ours, _timm_stages(m, x), RTOL)


def test_always_partition_pads_instead_of_clipping():
  _, m = _timm((32, 48), always_partition=True)
  x = np.random.RandomState(1).randn(1, 32, 48, 3).astype(np.float32)
  ours = _ours((32, 48), upstream.state_dict(m), always_partition=True)
  upstream.assert_stages_close(upstream.run(ours, x), _timm_stages(m, x),
                               RTOL)


def test_bias_tables_resized_like_timm():
  """A 128-px checkpoint (4x4 windows everywhere) loaded for 64x96 inputs,
  where stage 3 clips its windows to 2x3: timm's checkpoint_filter_fn
  resizes the tables, and so does our converter."""
  import torch  # pylint: disable=g-import-not-at-top
  st, big = _timm((128, 128))
  sd = upstream.state_dict(big)
  _, small = _timm((64, 96))
  small.load_state_dict(st.checkpoint_filter_fn(
      {k: torch.from_numpy(v) for k, v in sd.items()}, small), strict=False)
  key = "layers.3.blocks.0.attn.relative_position_bias_table"
  assert sd[key].shape != upstream.state_dict(small)[key].shape
  x = np.random.RandomState(2).randn(1, 64, 96, 3).astype(np.float32)
  upstream.assert_stages_close(upstream.run(_ours((64, 96), sd), x),
                               _timm_stages(small, x), RTOL)


def test_original_release_layout_is_renumbered():
  _, m = _timm((32, 32))
  sd = upstream.state_dict(m)
  old = {}
  for k, v in sd.items():   # Microsoft's release: merge at the stage END.
    k = k.replace("layers.1.downsample", "layers.0.downsample")
    k = k.replace("layers.2.downsample", "layers.1.downsample")
    k = k.replace("layers.3.downsample", "layers.2.downsample")
    old[k] = v
  a = nnx.state(_ours((32, 32), sd))
  b = nnx.state(_ours((32, 32), old))
  for (path, u), (_, v) in zip(nnx.to_flat_state(a), nnx.to_flat_state(b)):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v), str(path))


def test_converter_names_missing_keys():
  _, m = _timm((32, 32))
  sd = upstream.state_dict(m)
  del sd["layers.2.blocks.1.mlp.fc1.weight"]
  with pytest.raises(torch_utils.ConversionError,
                     match=r"layers\.2\.blocks\.1\.mlp\.fc1\.weight"):
    _ours((32, 32), sd)


def test_features_metadata_matches_model():
  model = nnx.eval_shape(lambda: swin.build(
      "B", img_size=(64, 64), rngs=nnx.Rngs(0), depths=(1, 1, 1, 1)))
  assert swin.features("B") == dict(zip(model.out_strides,
                                        model.out_channels))
  assert swin.features("B") == {4: 128, 8: 256, 16: 512, 32: 1024}
  assert set(swin.CONVERTERS) >= {"timm"}


def test_baseline_config_with_swin_predicts_full_size_maps():
  from mtdense_jax import config_check  # pylint: disable=g-import-not-at-top
  from tests.conftest import REPO  # pylint: disable=g-import-not-at-top
  cfg = config_check.load_config_file(
      str(REPO / "configs" / "synthetic_baseline.py") +
      ":encoder=swin_s,runlocal")
  assert (cfg.model.encoder, cfg.model.variant) == ("swin", "S")
  model = nnx.eval_shape(lambda: multitask.build_model(
      cfg.model, task_outputs={"a": 3, "b": 1},
      img_size=cfg.data.image_size, rngs=nnx.Rngs(0)))
  out = nnx.eval_shape(lambda m, x: m(x), model,
                       jnp.zeros((2, *cfg.data.image_size, 3)))["final"]
  assert out["a"].shape == (2, *cfg.data.image_size, 3)
  assert out["b"].shape == (2, *cfg.data.image_size, 1)


def _random_model(**kw):
  """A one-stage Swin (a plain and a shifted block) with random weights,
  built abstractly then filled."""
  model = nnx.eval_shape(lambda: swin.build(
      "T", img_size=(32, 32), rngs=nnx.Rngs(0), embed_dim=8, depths=(2,),
      num_heads=(2,), window_size=4, **kw))
  rs = np.random.RandomState(0)
  flat = [(p, v.replace(np.asarray(0.2 * rs.randn(*v.shape), np.float32)))
          for p, v in nnx.to_flat_state(nnx.state(model))]
  nnx.update(model, nnx.from_flat_state(flat))
  return model


def test_remat_block_keeps_gradients_and_bf16_stays_close():
  x = jnp.asarray(np.random.RandomState(3).randn(2, 32, 32, 3), jnp.float32)

  def grads(model):
    def loss(m):
      return sum(jnp.sum(jnp.sin(v.astype(jnp.float32)))
                 for v in m(x).values())
    return nnx.jit(nnx.grad(loss))(model)

  plain = nnx.to_flat_state(grads(_random_model()))
  remat = nnx.to_flat_state(grads(_random_model(remat="block")))
  for (path, a), (_, b) in zip(plain, remat):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5,
                               atol=1e-6, err_msg=str(path))
  f32 = upstream.run(_random_model(), x)
  bf16 = upstream.run(_random_model(dtype=jnp.bfloat16), x)
  for s in f32:
    assert bf16[s].dtype == jnp.bfloat16
    err = np.abs(np.asarray(bf16[s], np.float32) - np.asarray(f32[s])).max()
    assert err < 0.1 * np.abs(np.asarray(f32[s])).max(), s


def test_parity_with_hf_swin():
  """HF computes windows differently (pad before the shift; square windows
  clipped by the shorter side): window_rule="hf". 36x52 gives 9x13 and 5x7
  maps whose padding (3) exceeds the shift (2), where the two orders
  differ. Two stages: HF cannot run stages smaller than its window."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  img_size, kw = (36, 52), dict(depths=(2, 2), num_heads=(1, 2))
  torch.manual_seed(0)
  hf = transformers.SwinModel(transformers.SwinConfig(
      image_size=img_size, patch_size=4, embed_dim=8, window_size=4,
      **{k: list(v) for k, v in kw.items()})).eval()
  with torch.no_grad():
    for name, p in hf.named_parameters():
      if "norm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  x = np.random.RandomState(0).randn(2, *img_size, 3).astype(np.float32)
  with torch.no_grad():
    emb, dims = hf.embeddings(torch.from_numpy(x).permute(0, 3, 1, 2))
    enc = hf.encoder(emb, dims, output_hidden_states=True,
                     output_hidden_states_before_downsampling=True)
    ref = [h.permute(0, 2, 3, 1).numpy()
           for h in enc.reshaped_hidden_states[1:]]
    last = hf.layernorm(enc.last_hidden_state)
    ref[-1] = last.reshape(ref[-1].shape).numpy()
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  model = upstream.converted(
      lambda: swin.build("T", img_size=img_size, rngs=nnx.Rngs(1),
                         out_norms="last", window_rule="hf", embed_dim=8,
                         window_size=4, **kw),
      swin.from_hf, sd)
  out = upstream.run(model, x)
  assert sorted(out) == [4, 8]
  for (stride, got), want in zip(sorted(out.items()), ref):
    err = np.abs(np.asarray(got) - want).max() / np.abs(want).max()
    print(f"HF stride {stride}: max |err| / max |ref| = {err:.1e}")
    assert err < RTOL, f"stride {stride}: relative error {err:.2e}"
