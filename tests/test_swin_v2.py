"""Swin-V2 encoder (torchvision layout): parity through our converter.

torchvision itself does not load beside the pinned torch, so two references:
  * timm's ``SwinTransformerV2`` (upstream code), its weights renamed to
    torchvision's keys, at sizes where timm and torchvision agree (every
    stage a whole number of windows);
  * ``TorchSwinV2Ref`` below: an INDEPENDENT straightforward torch
    re-statement of torchvision's ``shifted_window_attention`` (pad, then
    shift; no window clipping), with torchvision's module names, for the
    sizes that need padding.
Every stage output is compared with tolerance 1e-5 relative to max |ref|.
"""

from __future__ import annotations

import math
import re

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax.models.encoders import swin_v2
from tests import upstream

TINY = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
RTOL = 1e-5


def _perturb(m):
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(1)
  with torch.no_grad():   # non-trivial norms/biases/scales
    for name, p in m.named_parameters():
      if "norm" in name or "bias" in name or "logit_scale" in name:
        p.add_(0.1 * torch.randn_like(p))
  return m


def _ours(sd, window, **kw):
  return upstream.converted(
      lambda: swin_v2.build("T", img_size=(32, 32), rngs=nnx.Rngs(1),
                            out_norms="last", window_size=window, **TINY,
                            **kw),
      swin_v2.from_torchvision, sd)


def _timm_to_torchvision(sd):
  out = {}
  for k, v in sd.items():
    if k.endswith("relative_position_index") or k.endswith("coords_table"):
      continue
    if k.endswith(".attn.q_bias"):
      v_bias = sd[k.replace("q_bias", "v_bias")]
      k, v = k.replace("q_bias", "qkv.bias"), np.concatenate(
          [v, np.zeros_like(v), v_bias])
    elif k.endswith(".attn.v_bias"):
      continue
    k = re.sub(r"^patch_embed\.proj\.", "features.0.0.", k)
    k = re.sub(r"^patch_embed\.norm\.", "features.0.2.", k)
    k = re.sub(r"^layers\.(\d+)\.downsample\.",
               lambda m: f"features.{2 * int(m[1])}.", k)
    k = re.sub(r"^layers\.(\d+)\.blocks\.",
               lambda m: f"features.{2 * int(m[1]) + 1}.", k)
    out[k.replace(".mlp.fc1.", ".mlp.0.").replace(".mlp.fc2.", ".mlp.3.")] = v
  return out


@pytest.mark.parametrize("img_size", [(64, 64), (64, 128)])
def test_parity_with_timm_swin_v2(img_size):
  import torch  # pylint: disable=g-import-not-at-top
  st = upstream.timm_module("swin_transformer_v2")
  torch.manual_seed(0)
  m = _perturb(st.SwinTransformerV2(img_size=img_size, window_size=2,
                                    num_classes=0, **TINY).eval())
  x = np.random.RandomState(0).randn(2, *img_size, 3).astype(np.float32)
  with torch.no_grad():
    y = m.patch_embed(torch.from_numpy(x).permute(0, 3, 1, 2))
    ref = []
    for layer in m.layers:
      y = layer(y)
      ref.append(y)
    ref[-1] = m.norm(ref[-1])
  sd = _timm_to_torchvision(
      {k: v.numpy() for k, v in m.state_dict().items()})
  upstream.assert_stages_close(upstream.run(_ours(sd, 2), x),
                               [r.numpy() for r in ref], RTOL)


# ------------------------------------- independent torch reference (labelled)

def _torch_ref(window, dim, depths, heads):
  """torchvision's swin_v2 module tree, re-stated in plain torch."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  class Attn(nn.Module):
    def __init__(self, c, nh):
      super().__init__()
      self.nh = nh
      self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
      self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(nh, 1, 1)))
      self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(),
                                   nn.Linear(512, nh, bias=False))
      w = window
      ch = torch.arange(-(w - 1), w, dtype=torch.float32)
      t = torch.stack(torch.meshgrid(ch, ch, indexing="ij"), -1)
      t = t / (w - 1) * 8
      self.table = torch.sign(t) * torch.log2(t.abs() + 1.0) / 3.0
      g = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w),
                                     indexing="ij")).flatten(1)
      r = (g[:, :, None] - g[:, None, :]).permute(1, 2, 0)
      self.index = ((r[..., 0] + w - 1) * (2 * w - 1) + r[..., 1] + w
                    - 1).flatten()

    def forward(self, x):
      b, h, w_, c = x.shape
      ws = window
      x = F.pad(x, (0, 0, 0, (ws - w_ % ws) % ws, 0, (ws - h % ws) % ws))
      _, hp, wp, _ = x.shape
      sh = [0 if ws >= hp else self.shift, 0 if ws >= wp else self.shift]
      if sum(sh):
        x = torch.roll(x, (-sh[0], -sh[1]), (1, 2))
      nw = (hp // ws) * (wp // ws)
      x = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(
          0, 1, 3, 2, 4, 5).reshape(b * nw, ws * ws, c)
      bias = self.qkv.bias.clone()
      bias[c:2 * c] = 0
      qkv = F.linear(x, self.qkv.weight, bias).reshape(
          x.size(0), x.size(1), 3, self.nh, c // self.nh).permute(2, 0, 3, 1,
                                                                  4)
      q, k, v = qkv[0], qkv[1], qkv[2]
      a = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
      a = a * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
      rb = self.cpb_mlp(self.table).view(-1, self.nh)[self.index]
      a = a + 16 * torch.sigmoid(rb.view(ws * ws, ws * ws, -1).permute(
          2, 0, 1))
      if sum(sh):
        m = x.new_zeros(hp, wp)
        n = 0
        for hs in ((0, -ws), (-ws, -sh[0]), (-sh[0], None)):
          for wsl in ((0, -ws), (-ws, -sh[1]), (-sh[1], None)):
            m[hs[0]:hs[1], wsl[0]:wsl[1]] = n
            n += 1
        m = m.view(hp // ws, ws, wp // ws, ws).permute(0, 2, 1, 3).reshape(
            nw, ws * ws)
        m = m.unsqueeze(1) - m.unsqueeze(2)
        m = m.masked_fill(m != 0, -100.0)
        a = (a.view(b, nw, self.nh, ws * ws, ws * ws)
             + m[None, :, None]).view(-1, self.nh, ws * ws, ws * ws)
      x = (a.softmax(-1) @ v).transpose(1, 2).reshape(b * nw, ws * ws, c)
      x = self.proj(x).view(b, hp // ws, wp // ws, ws, ws, c).permute(
          0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
      if sum(sh):
        x = torch.roll(x, (sh[0], sh[1]), (1, 2))
      return x[:, :h, :w_]

  class Block(nn.Module):
    def __init__(self, c, nh, shift):
      super().__init__()
      self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
      self.attn = Attn(c, nh)
      self.attn.shift = shift
      self.mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Dropout(0),
                               nn.Linear(4 * c, c), nn.Dropout(0))

    def forward(self, x):
      x = x + self.norm1(self.attn(x))
      return x + self.norm2(self.mlp(x))

  class Merge(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.reduction = nn.Linear(4 * c, 2 * c, bias=False)
      self.norm = nn.LayerNorm(2 * c)

    def forward(self, x):
      x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
      x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                     x[:, 1::2, 1::2]], -1)
      return self.norm(self.reduction(x))

  class Permute(nn.Module):
    def forward(self, x):
      return x.permute(0, 2, 3, 1)

  feats = [nn.Sequential(nn.Conv2d(3, dim, 4, 4), Permute(),
                         nn.LayerNorm(dim))]
  for i, (d, nh) in enumerate(zip(depths, heads)):
    c = dim * 2 ** i
    if i:
      feats.append(Merge(c // 2))
    feats.append(nn.Sequential(*[Block(c, nh, window // 2 if j % 2 else 0)
                                 for j in range(d)]))
  model = nn.Module()
  model.features = nn.Sequential(*feats)
  model.norm = nn.LayerNorm(dim * 2 ** (len(depths) - 1))
  return model


@pytest.mark.parametrize("img_size", [(40, 56), (48, 80)])
def test_parity_with_torchvision_algorithm_where_windows_pad(img_size):
  """40x56: 10x14 pads to 12x16, odd 5x7 merges with padding; 48x80:
  non-square, the last stage (2x3) sits in one padded 4x4 window."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  ref = _perturb(_torch_ref(4, TINY["embed_dim"], TINY["depths"],
                            TINY["num_heads"]).eval())
  x = np.random.RandomState(0).randn(2, *img_size, 3).astype(np.float32)
  outs = []
  with torch.no_grad():
    y = torch.from_numpy(x).permute(0, 3, 1, 2)
    for i, f in enumerate(ref.features):
      y = f(y)
      if i % 2:
        outs.append(y)
    outs[-1] = ref.norm(outs[-1])
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  upstream.assert_stages_close(upstream.run(_ours(sd, 4), x),
                               [o.numpy() for o in outs], RTOL)


def test_key_bias_is_ignored_like_torchvision():
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  ref = _perturb(_torch_ref(4, 8, (1, 1, 1, 1), (1, 1, 1, 1)))
  sd = {k: v.numpy().copy() for k, v in ref.state_dict().items()}
  x = jnp.asarray(np.random.RandomState(0).randn(1, 32, 32, 3), jnp.float32)
  kw = dict(depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
  def build():
    return swin_v2.build("T", img_size=(32, 32), rngs=nnx.Rngs(1),
                         window_size=4, embed_dim=8, **kw)
  a = upstream.run(upstream.converted(build, swin_v2.from_torchvision, sd),
                   x)[4]
  sd["features.1.0.attn.qkv.bias"][8:16] += 5.0
  b = upstream.run(upstream.converted(build, swin_v2.from_torchvision, sd),
                   x)[4]
  np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
  assert swin_v2.features("B") == {4: 128, 8: 256, 16: 512, 32: 1024}


def test_gradient_finite_where_windows_pad():
  """Padded (all-zero) tokens enter the cosine attention: their unit vector
  must have a zero gradient, not sqrt's NaN at 0 (a swin_v2 run at 32x48
  stopped on a non-finite loss at step 1 before this)."""
  import jax  # pylint: disable=g-import-not-at-top
  model = swin_v2.build("T", img_size=(32, 48), rngs=nnx.Rngs(0),
                        window_size=4, embed_dim=8, depths=(1, 1, 1, 1),
                        num_heads=(1, 1, 2, 2))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  x = jnp.asarray(np.random.RandomState(0).randn(1, 32, 48, 3), jnp.float32)

  def loss(p):
    out = nnx.merge(graphdef, p, rest)(x)
    return sum(jnp.sum(v ** 2) for v in out.values())

  grads = jax.grad(loss)(params)
  leaves = jax.tree.leaves(grads)
  assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
