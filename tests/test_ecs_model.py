"""ECS backbone, heads and sharing against ../shared/golden/ecs_block_a and
ecs_model_a (the reference MultiViT / Block / ConvNeXtAdapter /
multimae_sparse run on recorded gate noise).

Tolerances (sidecars): block atol 2e-5 + rtol 1e-5; model outputs, hooked
sites and sharing outputs atol 1e-4 + rtol 1e-4; L1 penalties and L0 sums
rtol 1e-5; fractions of shared entries exact (the thresholds sit >= 3e-4
relative away from every |difference|)."""

from __future__ import annotations

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax.models.encoders import ecs_vit
from mtdense_jax.models.layers import hard_concrete as hc
from tests import ecs_testing as et

BLOCK_TOL = dict(atol=2e-5, rtol=1e-5)


@functools.partial(jax.jit, static_argnums=(2,))
def _block(p, x, heads, share=None):
  """One jitted block call returning (output, hooked sites, sharing stats)
  (a few compiles instead of one per eager op)."""
  sites, stats = {}, {}
  out = ecs_vit.block(p, x, heads, sites=sites, share=share, stats=stats)
  return out, sites, stats
MODEL_TOL = dict(atol=1e-4, rtol=1e-4)


def _block_params(g, prefix):
  inv = {v: k for k, v in ecs_vit._TORCH_BLOCK.items()}  # pylint: disable=protected-access
  return {inv[k[len(prefix):]]: jnp.asarray(ecs_vit.from_torch_layout(
      "b0_" + inv[k[len(prefix):]], v)) for k, v in g.items()
          if k.startswith(prefix)}


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _trace(w, image, patch, heads, depth):
  """(embedded tokens, every block's output, every block's sites)."""
  x = emb = ecs_vit.embed(w, image, patch)
  outs, sites = [], []
  for i in range(depth):
    s = {}
    x = ecs_vit.block(ecs_vit._block_params(w, i), x, heads, sites=s)  # pylint: disable=protected-access
    outs.append(x)
    sites.append(s)
  return emb, outs, sites


def test_block_gates_sites_penalty_and_sharing(golden):
  g, meta = golden("ecs_block_a")
  heads = meta["config"]["num_heads"]
  base = _block_params(g, "param/base/")
  delta = _block_params(g, "param/delta/")
  la = _block_params(g, "param/log_alpha/")
  la2 = _block_params(g, "param/log_alpha_tensor/")
  u = _block_params(g, "noise/u/")
  u2 = _block_params(g, "noise/u_tensor/")
  sub = {n: base[n] + hc.gated_delta(delta[n], la[n], la2[n], u[n], u2[n])
         for n in base}
  want_sub = _block_params(g, "param/sub/")
  for n in sub:
    np.testing.assert_allclose(sub[n], want_sub[n], atol=1e-7, rtol=0,
                               err_msg=n)
  x, x_sub = jnp.asarray(g["input/x"]), jnp.asarray(g["input/x_sub"])
  sites = {}
  for tag, p, inp in (("base", base, x), ("sub_same_input", sub, x),
                      ("sub_own_input", sub, x_sub)):
    out, sites[tag], _ = _block(p, inp, heads)
    np.testing.assert_allclose(out, g[f"output/{tag}"], **BLOCK_TOL)
    for site, tname in et.SITE_TORCH.items():
      np.testing.assert_allclose(sites[tag][site], g[f"act/{tag}/{tname}"],
                                 **BLOCK_TOL, err_msg=f"{tag} {site}")
    np.testing.assert_allclose(sites[tag]["proj"],
                               g[f"act/{tag}/attn.proj_drop"], **BLOCK_TOL)
  for tag in ("same_input", "own_input"):
    total = ecs_vit.activation_l1([sites["base"]], [sites[f"sub_{tag}"]])
    np.testing.assert_allclose(
        float(total), float(g[f"penalty/{tag}/l1_total_step3_sites"]),
        rtol=1e-5)
  th = float(g["sharing/threshold"][0])
  for thr, key in ((th, "sharing/output"), (0.0, "sharing/output_threshold0")):
    out, _, stats = _block(sub, x_sub, heads, (sites["base"], thr))
    np.testing.assert_allclose(out, g[key], **BLOCK_TOL, err_msg=key)
  want = meta["sharing"]["fraction_kept_nonshared_reference_stat"]
  _, _, stats = _block(sub, x_sub, heads, (sites["base"], th))
  for site in ecs_vit.SHARE_SITES:
    assert float(stats[site]) == pytest.approx(want[et.SITE_TORCH[site]],
                                               abs=1e-7), site


@pytest.fixture(scope="module")
def model_case(golden):
  g, meta = golden("ecs_model_a")
  return g, meta


def _loaded(model_case, monkeypatch, mode="gates"):
  g, meta = model_case
  model = et.build(meta["config"], mode)
  et.load(model, g, base="param/base/", base_head="param/base/",
          p0="param/sub_p0/", p1="param/sub_delta/",
          log_alpha="param/sub_log_alpha/",
          log_alpha_tensor="param/sub_log_alpha_tensor/")
  et.replay_noise(monkeypatch, g, "noise/u/", "noise/u_tensor/")
  return g, meta, model


def test_sincos_pos_emb_and_checkpoint_interpolation(model_case):
  g, meta = model_case
  grid = tuple(meta["config"]["grid_hw"])
  dim = meta["config"]["dim"]
  np.testing.assert_allclose(
      ecs_vit.sincos_pos_emb(grid, dim),
      ecs_vit.from_torch_layout("pos_emb", g["pos_emb/built_for_model"]),
      atol=1e-6)
  model = et.build(meta["config"])
  ck = {ecs_vit.torch_name(n): np.asarray(et.enc_tensor(g, "param/base/", n))
        for n in model.encoder.shapes}
  for n in model.encoder.shapes:   # back to torch layout for the converter
    ck[ecs_vit.torch_name(n)] = g["param/base/" + ecs_vit.torch_name(n)]
  ck["input_adapters.rgb.pos_emb"] = g["pos_emb/checkpoint_grid_sincos"]
  got = ecs_vit.from_torch(ck, model.encoder)["pos_emb"]
  np.testing.assert_allclose(
      got, ecs_vit.from_torch_layout("pos_emb", g["pos_emb/interpolated"]),
      atol=1e-6)
  # The CLI converter (DDP prefix stripped) fills the base backbone only.
  head_before = np.asarray(model.decoder.heads[et.SUB].init["proj_w"][...])
  out = ecs_vit.CONVERTERS["multimae"]({"module." + k: v for k, v in
                                        ck.items()}, tasks=None,
                                       build=lambda _: model)
  for n in model.encoder.shapes:
    want = (ecs_vit.from_torch_layout("pos_emb", g["pos_emb/interpolated"])
            if n == "pos_emb" else et.enc_tensor(g, "param/base/", n))
    np.testing.assert_allclose(np.asarray(out.encoder.base[n][...]), want,
                               atol=1e-6, err_msg=n)
  np.testing.assert_array_equal(
      np.asarray(out.decoder.heads[et.SUB].init["proj_w"][...]), head_before)
  with pytest.raises(KeyError, match="global_tokens"):
    ecs_vit.from_torch({k: v for k, v in ck.items() if k != "global_tokens"},
                       model.encoder)


def test_model_forward_gates_sites_l0(model_case, monkeypatch):
  g, meta, model = _loaded(model_case, monkeypatch)
  cfg = meta["config"]
  image = jnp.asarray(np.transpose(g["input/image"], (0, 2, 3, 1)))
  model.train()
  enc = model.encoder
  # Base and sub-task backbones, block by block, with every hooked site.
  for tag, weights in (("base", enc.base_weights()),
                       ("sub", enc.sub_weights(et.SUB, nnx.Rngs(0)))):
    x, outs, sites = _trace(weights, image, enc.patch, enc.num_heads,
                            cfg["depth"])
    np.testing.assert_allclose(
        x[:, :-1], g[f"intermediate/{tag}/input_adapters.rgb"], **MODEL_TOL)
    for i in range(cfg["depth"]):
      np.testing.assert_allclose(outs[i], g[f"intermediate/{tag}/encoder.{i}"],
                                 **MODEL_TOL, err_msg=f"{tag} block {i}")
      for site, tname in et.SITE_TORCH.items():
        np.testing.assert_allclose(
            sites[i][site], g[f"intermediate/{tag}/encoder.{i}.{tname}"],
            **MODEL_TOL, err_msg=f"{tag} {i} {site}")
  # Effective sub-task weights (p0 + (z2 z) p1) as the Step 1 loop writes.
  sub = enc.sub_weights(et.SUB, nnx.Rngs(0))
  for n in enc.shapes:
    np.testing.assert_allclose(sub[n], et.enc_tensor(g, "param/sub/", n),
                               atol=1e-6, rtol=0, err_msg=n)
  # Whole model (train mode: gates sampled, heads init + delta).
  preds = model(image, rngs=nnx.Rngs(0, dropout=1))
  np.testing.assert_allclose(et.nchw(preds["final"][et.BASE]),
                             g[f"output/base/{et.BASE}"], **MODEL_TOL)
  np.testing.assert_allclose(et.nchw(preds["final"][et.SUB]),
                             g[f"output/sub/{et.SUB}"], **MODEL_TOL)
  np.testing.assert_allclose(enc.l0_per_layer(et.SUB), g["l0/per_layer"],
                             rtol=1e-5)
  pen = cfg["sub_head"]["sparsity_pen"]
  np.testing.assert_allclose(float(preds["losses"][f"l0/{et.SUB}"]) * pen,
                             float(g["l0/penalty"]), rtol=1e-5)
  # Reference eval gate: the last sample; eval output equals train output.
  model.eval()
  ev = model(image)
  np.testing.assert_allclose(et.nchw(ev["final"][et.SUB]),
                             g[f"output/sub/{et.SUB}"], **MODEL_TOL)
  # The deterministic alternative (not reference behaviour).
  enc.eval_gate = "louizos"
  lz = enc.sub_weights(et.SUB)
  for n in ("b0_qkv_w", "pos_emb", "patch_w"):
    la = et.enc_tensor(g, "param/sub_log_alpha/", n)
    la2 = g["param/sub_log_alpha_tensor/" + ecs_vit.torch_name(n)]
    want = (et.enc_tensor(g, "param/base/", n)
            + (np.asarray(hc.louizos_gate(jnp.asarray(la2)))
               * np.asarray(hc.louizos_gate(jnp.asarray(la))))
            * et.enc_tensor(g, "param/sub_delta/", n))
    np.testing.assert_allclose(lz[n], want, atol=1e-6, rtol=0, err_msg=n)


def test_step3_penalty_temporal_penalty_and_sharing(model_case, monkeypatch):
  g, meta, model = _loaded(model_case, monkeypatch)
  cfg = meta["config"]
  image = jnp.asarray(np.transpose(g["input/image"], (0, 2, 3, 1)))
  nbr = jnp.asarray(np.transpose(g["input/image_neighbour_frame"],
                                 (0, 2, 3, 1)))
  model.train()
  model(image, rngs=nnx.Rngs(0, dropout=1))   # writes the sampled gates
  model.eval()
  enc = model.encoder
  base_sites, sub_sites, nbr_sites = [], [], []
  enc.backbone(enc.base_weights(), image, sites=base_sites)
  enc.backbone(enc.sub_weights(et.SUB), image, sites=sub_sites)
  enc.backbone(enc.base_weights(), nbr, sites=nbr_sites)
  total = ecs_vit.activation_l1(base_sites, sub_sites)
  np.testing.assert_allclose(float(total),
                             float(g["penalty/step3_task/l1_total"]),
                             rtol=1e-5)
  np.testing.assert_allclose(
      float(total) * cfg["sub_head"]["step3_act_coef"],
      float(g["penalty/step3_task/loss_term"]), rtol=1e-5)
  # NYU temporal sites: the Step3 list plus proj_drop (= proj, counted twice).
  per_layer = [0.0] + [
      float(ecs_vit.activation_l1([nbr_sites[i]], [base_sites[i]],
                                  ecs_vit.STEP3_SITES + ("proj",)))
      for i in range(cfg["depth"])]
  np.testing.assert_allclose(per_layer, g["penalty/nyu_temporal/per_layer"],
                             rtol=1e-5)
  # Sharing: the full multimae_sparse forward, then the sub-task head.
  th = {et.SUB: [float(v) for v in g["sharing/thresholds"]]}
  for ths, key in ((th, "sharing/output"),
                   ({et.SUB: [0.0] * cfg["depth"]},
                    "sharing/output_threshold0")):
    maps, kept = enc.shared_tokens(image, ths)
    out = model.decoder({"task_maps": maps})["final"][et.SUB]
    np.testing.assert_allclose(et.nchw(out), g[f"{key}/{et.SUB}"],
                               **MODEL_TOL, err_msg=key)
  maps, kept = enc.shared_tokens(image, th)
  want = meta["sharing"]["fraction_kept_nonshared_reference_stat"]
  for i, stats in enumerate(kept[et.SUB]):
    for site in ecs_vit.SHARE_SITES:
      assert float(stats[site]) == pytest.approx(
          want[f"encoder.{i}.{et.SITE_TORCH[site]}"], abs=1e-7), (i, site)
