"""Mask2Former encoder: parity with HF transformers' Mask2Former.

A tiny random ``Mask2FormerForUniversalSegmentation`` (Swin backbone) is
built in the test, every parameter perturbed (HF zero-initialises the
deformable offsets and attention weights, which would hide a swap), and
converted with ``mask2former.from_hf``. Backbone maps, multi-scale pixel
decoder maps, pixel embeddings, last decoder hidden state, mask and class
logits are compared in float32 with 'highest' matmuls; tolerance 1e-5
relative to each output's scale (max |ref|). The masked attention
thresholds mask logits at 0, so a parity failure anywhere upstream shows up
as a large error in ``masks_queries_logits``.
"""

from __future__ import annotations

import functools

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax.convert import torch_utils
from mtdense_jax.models import multitask
from mtdense_jax.models.encoders import mask2former
from mtdense_jax.models.layers import deform_attn
from tests import upstream

RTOL = 1e-5
# Every size differs from the others, so a transposed or swapped weight
# fails on shape; hidden_dim != feature_size exercises the decoder's input
# projections, mask_feature_size != both the mask MLP's output.
TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
            window_size=4, feature_size=32, mask_feature_size=24,
            hidden_dim=16, num_attention_heads=2, encoder_layers=2,
            encoder_feedforward_dim=40, decoder_layers=5, dim_feedforward=36,
            num_queries=6)
NUM_LABELS = 3


@functools.lru_cache(maxsize=None)
def _hf():
  """The HF model (eval, perturbed weights) and its numpy state_dict."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  backbone = transformers.SwinConfig(
      embed_dim=TINY["embed_dim"], depths=list(TINY["depths"]),
      num_heads=list(TINY["num_heads"]), window_size=TINY["window_size"],
      out_features=["stage1", "stage2", "stage3", "stage4"])
  cfg = transformers.Mask2FormerConfig(
      backbone_config=backbone, num_labels=NUM_LABELS,
      **{k: v for k, v in TINY.items() if k not in (
          "embed_dim", "depths", "num_heads", "window_size")})
  m = transformers.Mask2FormerForUniversalSegmentation(cfg).eval()
  with torch.no_grad():
    for _, p in m.named_parameters():
      p.add_(0.1 * torch.randn_like(p))
  return m, upstream.state_dict(m)


def _hf_outputs(x: np.ndarray) -> dict[str, np.ndarray]:
  """HF's outputs, channels last like ours."""
  import torch  # pylint: disable=g-import-not-at-top
  m, _ = _hf()
  with torch.no_grad():
    out = m(torch.from_numpy(x).permute(0, 3, 1, 2),
            output_hidden_states=True)
  nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()
  return {
      "multi_scale": [nhwc(t) for t in out.pixel_decoder_hidden_states],
      "encoder_last_hidden_state": nhwc(out.encoder_last_hidden_state),
      "pixel_decoder_last_hidden_state": nhwc(
          out.pixel_decoder_last_hidden_state),
      "masks_queries_logits": nhwc(out.masks_queries_logits),
      "transformer_decoder_last_hidden_state":
          out.transformer_decoder_last_hidden_state.numpy(),
      "class_queries_logits": out.class_queries_logits.numpy(),
  }


def _ours(img_size, sd, **kw):
  return upstream.converted(
      lambda: mask2former.build("tiny", img_size=img_size, rngs=nnx.Rngs(1),
                                **{**TINY, "num_labels": NUM_LABELS, **kw}),
      mask2former.from_hf, sd)


def _close(name: str, got, want) -> float:
  got = np.asarray(got, np.float32)
  assert got.shape == want.shape, (name, got.shape, want.shape)
  err = np.abs(got - want).max()
  rel = err / np.abs(want).max()
  print(f"{name}: max |err| = {err:.1e}, / max |ref| = {rel:.1e}")
  assert rel < RTOL, f"{name}: relative error {rel:.2e}"
  return rel


@pytest.mark.parametrize("img_size", [
    (64, 64),
    (72, 104),   # non-square; 9x13 and 5x7 maps pad windows, odd merges
])
def test_parity_with_hf(img_size):
  _, sd = _hf()
  x = np.random.RandomState(0).randn(2, *img_size, 3).astype(np.float32)
  want = _hf_outputs(x)
  model = _ours(img_size, sd)
  got = upstream.run(model, x)
  for name in ("encoder_last_hidden_state",
               "pixel_decoder_last_hidden_state", "masks_queries_logits",
               "transformer_decoder_last_hidden_state",
               "class_queries_logits"):
    _close(name, got[name], want[name])
  # The maps: pixel embeddings, then the multi-scale maps fine to coarse
  # (HF lists those coarse to fine).
  for i, (g, w) in enumerate(zip(got["maps"][1:],
                                 want["multi_scale"][::-1])):
    _close(f"multi_scale[{i}]", g, w)
  assert model.produces.strides == (4, 8, 16, 32)
  assert [tuple(g.shape[1:3]) for g in got["maps"]] == [
      (-(-img_size[0] // s), -(-img_size[1] // s)) for s in (4, 8, 16, 32)]


def _published_names(sd: dict) -> dict:
  """transformers 5 names -> those of the published checkpoints (no
  ``swin.`` level, ``attention.self.query``, ``output.dense``...), and
  ``Mask2FormerModel``'s keys (no ``model.`` prefix, no class head)."""
  subs = ((".swin.", "."), (".attention.q_proj.", ".attention.self.query."),
          (".attention.k_proj.", ".attention.self.key."),
          (".attention.v_proj.", ".attention.self.value."),
          (".attention.o_proj.", ".attention.output.dense."),
          (".attention.relative_position_bias.relative_position_bias_table",
           ".attention.self.relative_position_bias_table"),
          (".mlp.fc1.", ".intermediate.dense."),
          (".mlp.fc2.", ".output.dense."))
  out = {}
  for k, v in sd.items():
    if not k.startswith("model."):
      continue
    k = k[len("model."):]
    if k.startswith("pixel_level_module.encoder."):
      for a, b in subs:
        k = k.replace(a, b)
    out[k] = v
  return out


def test_safetensors_round_trip_with_published_names(tmp_path):
  """A safetensors file in the published layout (Mask2FormerModel keys) ->
  the same parameters as the in-memory transformers-5 state_dict."""
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  _, sd = _hf()
  path = tmp_path / "m2f.safetensors"
  safetensors_numpy.save_file(
      {k: np.ascontiguousarray(v) for k, v in _published_names(sd).items()},
      str(path))
  loaded = torch_utils.load_state_dict(path)
  assert any("attention.self.query" in k for k in loaded)
  a = _ours((64, 64), loaded, num_labels=0)
  b = _ours((64, 64), sd, num_labels=0)
  flat_a = nnx.to_flat_state(nnx.state(a))
  flat_b = nnx.to_flat_state(nnx.state(b))
  assert len(flat_a) == len(flat_b) > 0
  for (pa, va), (pb, vb) in zip(flat_a, flat_b):
    assert pa == pb
    np.testing.assert_array_equal(np.asarray(va[...]), np.asarray(vb[...]),
                                  str(pa))
  # A wrong file names what is missing.
  del loaded["transformer_module.decoder.layers.1.fc1.weight"]
  with pytest.raises(torch_utils.ConversionError,
                     match=r"decoder\.layers\.1\.fc1\.weight"):
    _ours((64, 64), loaded, num_labels=0)


def test_deformable_sampler_matches_hf_reference():
  """Our gather-based sampler against HF's grid_sample-based
  multi_scale_deformable_attention at random values, locations (many
  outside [0, 1], so zero padding matters) and weights."""
  torch = pytest.importorskip("torch")
  hf = pytest.importorskip(
      "transformers.models.mask2former.modeling_mask2former")
  rs = np.random.RandomState(0)
  shapes = [(5, 7), (3, 4), (2, 2)]
  b, q, heads, hd, pts = 2, 11, 3, 4, 5
  s = sum(h * w for h, w in shapes)
  value = rs.randn(b, s, heads, hd).astype(np.float32)
  loc = rs.uniform(-0.3, 1.3, (b, q, heads, len(shapes), pts, 2)).astype(
      np.float32)
  w = rs.rand(b, q, heads, len(shapes), pts).astype(np.float32)
  want = hf.multi_scale_deformable_attention(
      torch.from_numpy(value), shapes, torch.from_numpy(loc),
      torch.from_numpy(w)).numpy()
  got = deform_attn.multi_scale_deformable_attention(
      jnp.asarray(value), shapes, jnp.asarray(loc), jnp.asarray(w))
  assert got.shape == want.shape == (b, q, heads * hd)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_grid_sample_matches_torch_at_edges():
  torch = pytest.importorskip("torch")
  rs = np.random.RandomState(1)
  v = rs.randn(3, 4, 6, 2).astype(np.float32)
  # Exact pixel centres, edges, and points just and far outside.
  g = np.concatenate([rs.uniform(-1.5, 1.5, (3, 40, 2)),
                      np.array([[-1, -1], [1, 1], [-1.2, 0], [0, 1.1],
                                [-11 / 12, -0.75], [2, 2]] * 3).reshape(
                                    3, 6, 2)], 1).astype(np.float32)
  want = torch.nn.functional.grid_sample(
      torch.from_numpy(v).permute(0, 3, 1, 2),
      torch.from_numpy(g)[:, :, None], mode="bilinear", padding_mode="zeros",
      align_corners=False)[..., 0].permute(0, 2, 1).numpy()
  got = deform_attn.grid_sample(jnp.asarray(v), jnp.asarray(g))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


def test_sine_position_matches_hf():
  torch = pytest.importorskip("torch")
  hf = pytest.importorskip(
      "transformers.models.mask2former.modeling_mask2former")
  emb = hf.Mask2FormerSinePositionEmbedding(num_position_features=12,
                                            normalize=True)
  want = emb((1, 5, 3, 7), "cpu", torch.float32)[0].permute(1, 2, 0).numpy()
  np.testing.assert_allclose(mask2former.sine_position(3, 7, 24), want,
                             rtol=1e-6, atol=1e-6)


def test_config_errors_and_spec():
  with pytest.raises(KeyError, match="swin_s"):
    mask2former.build("nope", img_size=(64, 64), rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match="hiden_dim"):
    mask2former.build("tiny", img_size=(64, 64), rngs=nnx.Rngs(0),
                      hiden_dim=8)
  with pytest.raises(ValueError, match="num_groups"):
    nnx.eval_shape(lambda: mask2former.build(
        "tiny", img_size=(64, 64), rngs=nnx.Rngs(0), feature_size=24))
  model = nnx.eval_shape(lambda: mask2former.build(
      "swin_s", img_size=(64, 64), rngs=nnx.Rngs(0), depths=(1, 1, 1, 1)))
  assert model.produces.channels == (256, 256, 256, 256)
  assert model.produces.names[0] == "pixel_decoder_last_hidden_state"
  assert "masks_queries_logits" in model.produces.extras
  assert len(model.transformer.layers) == 9   # decoder_layers=10 counts
  assert len(model.pixel_decoder.encoder) == 6   # the query-only prediction
  assert set(mask2former.CONVERTERS) == {"hf"}
  from mtdense_jax.convert import __main__ as convert_cli  # pylint: disable=g-import-not-at-top
  assert convert_cli.find_converter("hf", dict(
      encoder="mask2former", decoder="baseline")) is (
          mask2former.CONVERTERS["hf"])


def _random_model(**kw):
  """The tiny model at 32x32 with random weights, built abstractly."""
  m = nnx.eval_shape(lambda: mask2former.build(
      "tiny", img_size=(32, 32), rngs=nnx.Rngs(0), decoder_layers=2, **kw))
  rs = np.random.RandomState(0)
  flat = [(p, v.replace(np.asarray(0.2 * rs.randn(*v.shape), np.float32)))
          for p, v in nnx.to_flat_state(nnx.state(m))]
  nnx.update(m, nnx.from_flat_state(flat))
  return m


def test_swin_s_has_the_sizes_of_hf_swin_small_ade():
  """VARIANTS["swin_s"] + 150 labels has exactly the parameters of HF's
  Mask2Former at its config defaults with a Swin-S backbone (what
  facebook/mask2former-swin-small-ade-semantic is), less the backbone's
  final layernorm, which transformers 5 adds and SwinBackbone never uses
  (the published checkpoint lacks it)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  v = mask2former.VARIANTS["swin_s"]
  backbone = transformers.SwinConfig(
      embed_dim=v["embed_dim"], depths=list(v["depths"]),
      num_heads=list(v["num_heads"]), window_size=v["window_size"],
      out_features=["stage1", "stage2", "stage3", "stage4"])
  cfg = transformers.Mask2FormerConfig(backbone_config=backbone,
                                       num_labels=150)
  for key in ("feature_size", "mask_feature_size", "hidden_dim",
              "encoder_layers", "decoder_layers", "num_attention_heads",
              "dim_feedforward", "encoder_feedforward_dim", "num_queries"):
    assert getattr(cfg, key) == v[key], key
  with torch.device("meta"):
    hf = transformers.Mask2FormerForUniversalSegmentation(cfg)
  want = sum(p.numel() for n, p in hf.named_parameters()
             if ".swin.layernorm." not in n)
  ours = nnx.eval_shape(lambda: mask2former.build(
      "swin_s", img_size=(64, 64), rngs=nnx.Rngs(0), num_labels=150))
  got = sum(int(np.prod(x.shape))
            for _, x in nnx.to_flat_state(nnx.state(ours, nnx.Param)))
  assert got == want


@pytest.mark.slow   # two gradient and two forward compiles: ~1 min.
def test_remat_keeps_gradients_and_bf16_stays_close():
  x = jnp.asarray(np.random.RandomState(3).randn(1, 32, 32, 3), jnp.float32)

  def grads(m):
    def loss(mod):
      f = mod(x)
      return (jnp.sum(jnp.sin(f["pixel_decoder_last_hidden_state"]))
              + jnp.sum(jnp.sin(f["masks_queries_logits"])))
    return nnx.jit(nnx.grad(loss))(m)

  plain = nnx.to_flat_state(grads(_random_model()))
  remat = nnx.to_flat_state(grads(_random_model(remat="block")))
  assert len(plain) == len(remat)
  # Recomputation may reassociate sums: float32 noise relative to the
  # gradients' scale (some leaves, e.g. biases before a GroupNorm, have
  # gradients that are pure cancellation noise).
  scale = max(np.abs(np.asarray(a[...])).max() for _, a in plain)
  for (path, a), (_, b) in zip(plain, remat):
    err = np.abs(np.asarray(a[...]) - np.asarray(b[...])).max()
    assert err <= 1e-5 * scale, (path, err, scale)
  f32 = upstream.run(_random_model(), x)
  bf16 = upstream.run(_random_model(dtype=jnp.bfloat16), x)
  got = bf16["pixel_decoder_last_hidden_state"]
  want = np.asarray(f32["pixel_decoder_last_hidden_state"])
  assert got.dtype == jnp.bfloat16
  assert np.abs(np.asarray(got, np.float32) - want).max() < (
      0.1 * np.abs(want).max())


def test_baseline_config_with_mask2former_predicts_full_size_maps():
  from mtdense_jax import config_check  # pylint: disable=g-import-not-at-top
  from tests.conftest import REPO  # pylint: disable=g-import-not-at-top
  cfg = config_check.load_config_file(
      str(REPO / "configs" / "synthetic_baseline.py") +
      ":encoder=mask2former_tiny,runlocal")
  assert (cfg.model.encoder, cfg.model.variant) == ("mask2former", "tiny")
  model = nnx.eval_shape(lambda: multitask.build_model(
      cfg.model, task_outputs={"a": 3, "b": 1},
      img_size=cfg.data.image_size, rngs=nnx.Rngs(0)))
  out = nnx.eval_shape(lambda m, x: m(x), model,
                       jnp.zeros((2, *cfg.data.image_size, 3)))["final"]
  assert out["a"].shape == (2, *cfg.data.image_size, 3)
  assert out["b"].shape == (2, *cfg.data.image_size, 1)
