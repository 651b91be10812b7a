"""The MT-CP model (tiny Mask2Former + MT-CP decoder) as assembled by
``multitask.build_model``: output and aux shapes, gradients through every
branch, the CFM's order of the other tasks (the reference's), the
single-task variant, the resizes against PyTorch, and the config errors."""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtdense_jax.models import multitask
from mtdense_jax.models.decoders import mtcp
from mtdense_jax.models.layers import mtcp_blocks as blocks

TASKS = {"semseg": 5, "depth": 1, "normals": 3}
IMG = (32, 32)
# The tiny encoder's pixel embeddings are 32 wide, so is the decoder Swin.
DEC_KW = dict(embed_dim=32, dim=16, depths=(1, 2, 1), num_heads=(2, 2, 2),
              window_size=4, heads={"depth": "depth"},
              head_upsample={"semseg": 2, "depth": 2}, cfm_chunk=24)


def build(tasks=None, **overrides):
  cfg = dict(encoder="mask2former", variant="tiny", decoder="mtcp",
             decoder_kw={**DEC_KW, **overrides})
  return multitask.build_model(cfg, task_outputs=tasks or TASKS,
                               img_size=IMG, rngs=nnx.Rngs(0))


def _image(b=2):
  return jnp.asarray(np.random.default_rng(0).normal(size=(b, *IMG, 3)),
                     jnp.float32)


@nnx.jit
def _forward_backward(model, x):
  def loss(m):
    out = m(x)
    heads = [out["final"]] + list(out["aux"].values())
    return sum(jnp.mean(v ** 2) for h in heads for v in h.values()), out
  grads, out = nnx.grad(loss, has_aux=True)(model)
  return out, grads


# Building the 3-branch model under a trace costs ~20 s (flax's Variable
# updates ask each rng-counter tracer for its sharding, whose error message
# walks the whole trace) and its train-step compile ~2 min on one core.
@pytest.mark.slow
def test_forward_backward_shapes_and_gradients():
  model = build()
  out, grads = _forward_backward(model, _image())
  shapes = {t: (2, *IMG, n) for t, n in TASKS.items()}
  assert {t: v.shape for t, v in out["final"].items()} == shapes
  assert sorted(out["aux"]) == ["initial_0", "initial_1"]
  for head in out["aux"].values():
    assert {t: v.shape for t, v in head.items()} == shapes
  flat = nnx.to_flat_state(grads)
  for path, g in flat:
    assert np.all(np.isfinite(np.asarray(g[...]))), path
  dec = grads["decoder"]["branches"]
  for t in TASKS:   # Every part of every branch reaches the loss.
    for part in ("swin", "fpn", "cfm", "trace_back", "head", "aux"):
      leaves = jax.tree.leaves(nnx.state(dec[t][part]))
      assert max(float(jnp.abs(x).max()) for x in leaves) > 0, (t, part)
    for i in range(len(TASKS) - 1):   # gate1, gate2
      kernel = dec[t]["cfm"]["gates"][i]["kernel"][...]
      assert float(jnp.abs(kernel).max()) > 0, (t, i)
  # The decoder reads the encoder's mask logits (R = P * sum_q M_q).
  masks = grads["encoder"]["transformer"]
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(masks)) > 0


def test_shared_representation():
  rng = np.random.default_rng(1)
  p = rng.normal(size=(2, 4, 5, 6)).astype(np.float32)
  m = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
  got = mtcp.shared_representation(
      {mtcp.PIXELS: jnp.asarray(p), mtcp.MASKS: jnp.asarray(m)})
  want = torch.einsum("bnhw,bdhw->bdhw", torch.from_numpy(m).permute(0, 3, 1, 2),
                      torch.from_numpy(p).permute(0, 3, 1, 2))
  np.testing.assert_allclose(got, want.permute(0, 2, 3, 1).numpy(),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.slow   # An eager 3-branch forward.
def test_cfm_gets_the_other_tasks_in_config_order(monkeypatch):
  """Reference forward: semseg <- [depth, normals], depth <- [semseg,
  normals], normals <- [semseg, depth] (gate1 meets the first)."""
  model = build()
  model.eval()
  seen = {}
  original = blocks.CFM.__call__

  def spy(self, x, others):
    seen[id(self)] = (x, list(others))
    return original(self, x, others)

  monkeypatch.setattr(blocks.CFM, "__call__", spy)
  x = _image(1)
  feats = model.encoder(x)
  model.decoder(feats)
  r = mtcp.shared_representation(feats)
  dec = model.decoder
  embeds = {t: dec.branches[t].fpn(dec.branches[t].swin(r)) for t in TASKS}
  for t in TASKS:
    got_x, got_others = seen[id(dec.branches[t].cfm)]
    np.testing.assert_array_equal(got_x, embeds[t])
    want = [o for o in TASKS if o != t]
    assert len(got_others) == len(want)
    for g, o in zip(got_others, want):
      np.testing.assert_array_equal(g, embeds[o], err_msg=f"{t} <- {o}")


@pytest.mark.slow   # Two model compiles.
def test_chunked_and_direct_cfm_give_the_same_model_output():
  x = _image(1)
  outs = []
  for attention in ("direct", "chunked"):
    model = build(cfm_attention=attention)
    model.eval()
    outs.append(nnx.jit(lambda m, i: m(i))(model, x))
  for t in TASKS:
    np.testing.assert_allclose(outs[1]["final"][t], outs[0]["final"][t],
                               atol=1e-5, rtol=1e-5)


def test_single_task_model():
  """The reference SingleTaskModel*: stage 0 -> head, nothing else."""
  model = build({"depth": 1}, head_upsample={"depth": 2})
  assert model.decoder.single
  br = model.decoder.branches["depth"]
  assert br.cfm is None and br.fpn is None and len(br.swin.stages) == 1
  out, _ = _forward_backward(model, _image())
  assert out["final"]["depth"].shape == (2, *IMG, 1) and out["aux"] == {}
  multi = build({"semseg": 5, "depth": 1}, single_task=True)
  assert multi.decoder.single


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_align_corners_upsampling_matches_torch(factor):
  x = np.random.default_rng(2).normal(size=(2, 3, 5, 7)).astype(np.float32)
  want = F.interpolate(torch.from_numpy(x), scale_factor=factor,
                       mode="bilinear", align_corners=True).numpy()
  got = mtcp.resize_align_corners(jnp.asarray(x.transpose(0, 2, 3, 1)),
                                  factor)
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want,
                             atol=1e-6, rtol=0)


@pytest.mark.parametrize("src,dst", [((4, 6), (8, 12)), ((3, 5), (6, 10)),
                                     ((4, 4), (7, 9))])
def test_nearest_matches_torch(src, dst):
  x = np.random.default_rng(3).normal(size=(1, 2, *src)).astype(np.float32)
  want = F.interpolate(torch.from_numpy(x), size=dst, mode="nearest").numpy()
  got = mtcp._nearest(jnp.asarray(x.transpose(0, 2, 3, 1)), dst)
  np.testing.assert_array_equal(np.asarray(got).transpose(0, 3, 1, 2), want)


def test_config_errors_name_the_key():
  with pytest.raises(ValueError, match="embed_dim"):
    build(embed_dim=16)
  with pytest.raises(ValueError, match="head kind"):
    build(heads={"depth": "mlp"})
  with pytest.raises(ValueError, match="not in config.tasks"):
    build(head_upsample={"sal": 2})
  with pytest.raises(ValueError, match="cfm_attention"):
    build(cfm_attention="flash")
