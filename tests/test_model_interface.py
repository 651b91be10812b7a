"""The encoder -> decoder contract with toy plugins from tests/: a
multi-scale CNN with the baseline decoder, a task-aware prompt encoder with a
decoder that reads task tokens, composition errors, and the ViT hooks
(extra tokens, attention) against the plain path."""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax.models import features
from mtdense_jax.models import multitask
from mtdense_jax.models.encoders import vit

TASKS = {"semseg": 3, "depth": 1}
VIT_KW = dict(width=16, depth=3, num_heads=2, taps=(1, 2, 3))


def _build(encoder, decoder, img=(64, 64), enc_kw=None, dec_kw=None):
  cfg = dict(encoder=encoder, variant="Ti/16", decoder=decoder,
             encoder_kw=enc_kw or {}, decoder_kw=dec_kw or {})
  return multitask.build_model(cfg, task_outputs=TASKS, img_size=img,
                               rngs=nnx.Rngs(0))


def _image(b=2, img=(64, 64)):
  return jnp.asarray(np.random.default_rng(0).normal(size=(b, *img, 3)),
                     jnp.float32)


@nnx.jit
def _forward_backward(model, x):
  """One compiled forward + gradient of a toy loss (eager is slow on CPU)."""
  def loss(m):
    out = m(x)
    total = sum(jnp.mean(v ** 2) for v in out["final"].values())
    return total + sum(out["losses"].values()), out
  grads, out = nnx.grad(loss, has_aux=True)(model)
  return out, grads


def test_multiscale_cnn_with_baseline_forward_backward():
  model = _build("tests.toy_cnn_encoder", "baseline", dec_kw=dict(dim=16))
  assert model.encoder.produces.strides == (4, 8, 16, 32)
  assert model.encoder.produces.channels == (8, 16, 32, 64)
  out, grads = _forward_backward(model, _image())
  assert {t: v.shape for t, v in out["final"].items()} == {
      "semseg": (2, 64, 64, 3), "depth": (2, 64, 64, 1)}
  assert out["losses"] == {} and out["aux"] == {}
  for path, g in nnx.to_flat_state(grads):
    assert np.all(np.isfinite(np.asarray(g[...]))), path
  # Every stage, the stride-4 and stride-32 ones included, reaches the loss.
  stage_grads = [grads["encoder"]["stem"]["kernel"]] + [
      grads["encoder"]["stages"][i]["kernel"] for i in range(3)]
  for g in stage_grads:
    assert np.abs(np.asarray(g[...])).max() > 0


def test_composition_mismatch_names_both_plugins():
  with pytest.raises(ValueError, match=r"decoder 'invpt' cannot read encoder "
                     r"'tests.toy_cnn_encoder': .*one stride, gets "
                     r"\(4, 8, 16, 32\)"):
    _build("tests.toy_cnn_encoder", "invpt")
  with pytest.raises(ValueError, match=r"'tests.toy_prompt_decoder' cannot "
                     r"read encoder 'vit': needs \['task_tokens'\]"):
    _build("vit", "tests.toy_prompt_decoder", enc_kw=VIT_KW)


def test_problems_lists_every_mismatch():
  produced = features.spec((4, 8), (8, 16), extras=("attn",))
  assert features.problems(produced, features.Consumes()) == []
  found = features.problems(produced, features.Consumes(
      num_maps=4, names=("fuse",), strides=(4, 4), channels=(8, 8),
      extras=("attn", "task_tokens")))
  assert len(found) == 5, found


def test_task_aware_encoder_and_model_losses():
  model = _build("tests.toy_prompt_encoder", "tests.toy_prompt_decoder",
                 enc_kw=VIT_KW)
  assert model.encoder.tasks == tuple(TASKS)   # build got the task list
  x = _image()
  feats = nnx.jit(lambda m, x: m.encoder(x))(model, x)
  assert set(feats["task_tokens"]) == set(TASKS)
  assert feats["task_tokens"]["semseg"].shape == (2, 16)
  n = 2 + 1 + 16   # prompts, cls, 4x4 patches
  assert [a["weights"].shape for a in feats["attn"]] == [(2, 2, n, n)] * 4
  out, grads = _forward_backward(model, x)
  assert sorted(out["losses"]) == ["gate_spread", "prompt_l2"]
  np.testing.assert_allclose(
      out["losses"]["prompt_l2"],
      1e-3 * np.mean(np.asarray(model.encoder.prompts[...]) ** 2), rtol=1e-6)
  assert out["final"]["semseg"].shape == (2, 64, 64, 3)
  # The prompts reach the loss through the joint attention.
  assert np.abs(np.asarray(grads["encoder"]["prompts"][...])).max() > 0


def _vit(**kw):
  return vit.build("Ti/16", img_size=(32, 64), rngs=nnx.Rngs(0),
                   **{**VIT_KW, **kw})


def test_zero_extra_tokens_and_attention_leave_maps_unchanged():
  model = _vit()
  x = _image(2, (32, 64))

  @nnx.jit
  def both(m, x):
    return m(x), m(x, extra_tokens=jnp.zeros((2, 0, 16)), return_attn=True)

  plain, empty = both(model, x)
  for a, b in zip(plain["maps"], empty["maps"]):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert [e.shape for e in empty["extra_tokens"]] == [(2, 0, 16)] * 4
  assert "attn" not in plain and "extra_tokens" not in plain


def test_extra_tokens_equal_a_joint_sequence():
  """In eval mode, carrying P extra tokens equals running the plain block
  on [extra, tokens] (LayerNorm and MLP are per token, attention joint)."""
  model = _vit()
  model.eval()
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 9, 16)), jnp.float32)
  e = jnp.asarray(rng.normal(size=(2, 3, 16)), jnp.float32)
  blk = model.blocks[1]
  y, e2, attn = blk.with_extra(x, e, return_attn=True)
  joint = blk(jnp.concatenate([e, x], axis=1))
  np.testing.assert_allclose(np.asarray(e2), np.asarray(joint[:, :3]),
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(y), np.asarray(joint[:, 3:]),
                             atol=1e-6)
  w = np.asarray(attn["weights"])
  assert w.shape == (2, 2, 12, 12)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(
      w, np.asarray(jax.nn.softmax(attn["scores"] * 8 ** -0.5, axis=-1)),
      atol=1e-6)


def test_extra_tokens_through_the_vit():
  model = _vit()
  x = _image(2, (32, 64))
  e = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 16)),
                  jnp.float32)
  out = model(x, extra_tokens=e, return_attn=True)
  assert [m.shape for m in out["maps"]] == [(2, 2, 4, 16)] * 4
  assert [t.shape for t in out["extra_tokens"]] == [(2, 5, 16)] * 4
  # The last tap reuses the last block (taps end at depth 3).
  np.testing.assert_array_equal(np.asarray(out["extra_tokens"][2]),
                                np.asarray(out["extra_tokens"][3]))
  assert out["attn"][3] is out["attn"][2] or np.array_equal(
      np.asarray(out["attn"][3]["scores"]),
      np.asarray(out["attn"][2]["scores"]))
  # Patch tokens now attend to the extra tokens.
  assert np.abs(np.asarray(out["maps"][-1] - model(x)["maps"][-1])).max() > 0
