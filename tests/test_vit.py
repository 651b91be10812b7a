"""ViT encoder: interface, stochastic depth, and parity with the InvPT ViT.

Parity uses the backbone taps stored in the InvPT goldens
(``intermediate/backbone/selected_fea_<i>``), converted from the stored
PyTorch state_dict with :func:`vit.from_torch`.
"""

from __future__ import annotations

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax import registry
from mtdense_jax.models.encoders import vit

TINY = dict(width=32, depth=4, num_heads=2)
ATOL = 2e-5  # float32 port; the sidecars give float32-vs-float64 <= 4e-6.


def _tiny(**kw):
  return vit.build("Ti/16", img_size=(32, 64), rngs=nnx.Rngs(0),
                   **{**TINY, **kw})


def test_registry_and_variants():
  assert registry.lookup("encoder", "vit") is vit
  assert vit.VARIANTS["L/16"] == dict(width=1024, depth=24, num_heads=16)
  assert vit.default_taps(24) == (6, 12, 18)
  assert vit.default_taps(4) == (1, 2, 3)


def test_shapes_and_taps():
  model = _tiny(taps=(1, 3, 4))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 64, 3)),
                  jnp.float32)
  outs = model(x)["maps"]
  assert model.produces.strides == (16,) * 4
  assert model.out_channels == (32,) * 4
  assert [o.shape for o in outs] == [(2, 2, 4, 32)] * 4
  # Tap 3 is the un-normed output of the last block; the 4th tap is normed.
  assert np.abs(np.asarray(outs[2] - outs[3])).max() > 1e-3
  np.testing.assert_allclose(np.asarray(outs[3]).mean(-1), 0.0, atol=0.3)


@pytest.mark.parametrize("taps", [(0, 1, 2), (2, 1, 3), (1, 2, 5), (1, 2)])
def test_bad_taps(taps):
  with pytest.raises(ValueError):
    _tiny(taps=taps)


def test_bad_input_size_and_overrides():
  with pytest.raises(ValueError, match="grid"):
    _tiny()(jnp.zeros((1, 48, 64, 3)))
  with pytest.raises(TypeError):
    _tiny(nonsense=1)
  with pytest.raises(KeyError):
    vit.build("H/14", img_size=(32, 32), rngs=nnx.Rngs(0))


def test_drop_path_train_eval():
  model = _tiny(drop_path_rate=0.5)
  x = jnp.ones((4, 32, 64, 3))
  ref = model(x)["maps"][-1]
  model.train()
  np.testing.assert_array_equal(np.asarray(model(x, rngs=None)["maps"][-1]),
                                np.asarray(ref))
  noisy = model(x, rngs=nnx.Rngs(dropout=3))["maps"][-1]
  assert np.abs(np.asarray(noisy - ref)).max() > 1e-3
  model.eval()
  np.testing.assert_array_equal(
      np.asarray(model(x, rngs=nnx.Rngs(dropout=3))["maps"][-1]),
      np.asarray(ref))


@pytest.mark.parametrize("case", ["invpt_nyud_a", "invpt_pascal_a"])
def test_parity_with_invpt_backbone(golden, case):
  npz, meta = golden(case)
  cfg = meta["config"]["vit"]
  model = vit.build(
      "B/16", img_size=tuple(meta["config"]["image_size_hw"]),
      rngs=nnx.Rngs(0), width=cfg["embed_dim"], depth=cfg["depth"],
      num_heads=cfg["num_heads"], taps=cfg["select_list"],
      patch_size=cfg["patch_size"])
  sd = {k[len("param/"):]: v for k, v in npz.items()
        if k.startswith("param/")}
  nnx.update(model, vit.from_torch(sd, model, prefix="backbone."))
  model.eval()
  outs = model(jnp.asarray(npz["input"].transpose(0, 2, 3, 1)))["maps"]
  for i, out in enumerate(outs):
    ref = npz[f"intermediate/backbone/selected_fea_{i}"]  # [B, N, C]
    np.testing.assert_allclose(np.asarray(out).reshape(ref.shape), ref,
                               atol=ATOL, rtol=0, err_msg=f"tap {i}")


def test_return_attn_option_and_no_class_token():
  """Built with return_attn the features declare and carry "attn"; without
  a class token the sequence is just the patches, the cls slot of the
  position table unused, and a timm checkpoint still loads (its cls_token
  ignored)."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 32, 64, 3)),
                  jnp.float32)
  model = _tiny(return_attn=True, class_token=False)
  assert model.produces.extras == ("attn",)
  out = model(x)
  assert [m.shape for m in out["maps"]] == [(1, 2, 4, 32)] * 4
  assert out["attn"][0]["weights"].shape == (1, 2, 8, 8)
  with_cls = _tiny(return_attn=True)
  assert with_cls(x)["attn"][0]["weights"].shape == (1, 2, 9, 9)
  assert not hasattr(model, "cls_token")
  sd = {"cls_token": np.zeros((1, 1, 32), np.float32)}
  for path, var in nnx.to_flat_state(nnx.state(with_cls, nnx.Param)):
    if path[0] == "cls_token":
      continue
    v = np.asarray(var[...])
    if path[-1] == "kernel":
      v = v.T if v.ndim == 2 else v.transpose(3, 2, 0, 1)
    leaf = {"kernel": "weight", "scale": "weight"}.get(path[-1], path[-1])
    sd[".".join([str(p) for p in path[:-1]] + [leaf])] = v
  nnx.update(model, vit.from_torch(sd, model))
  np.testing.assert_array_equal(np.asarray(model.pos_embed[...]),
                                np.asarray(with_cls.pos_embed[...]))
