"""HRNet encoder: parity with timm's HighResolutionNet (the official
classification layout, key for key) through our converter, in eval mode.

Every branch output (strides 4/8/16/32) and the CTAL fused map are compared
with tolerance 1e-5 relative to max |ref| (float32, 'highest' matmuls).
"""

from __future__ import annotations

from flax import nnx
import numpy as np
import pytest

from mtdense_jax.convert import torch_utils
from mtdense_jax.models import multitask
from mtdense_jax.models.encoders import hrnet
from tests import upstream

RTOL = 1e-5
# Small widths, but every structural case: 2 stem Bottlenecks (the first
# with a downsample), 1/1/2 HRModules, 2 BasicBlocks per branch, fusions
# across 1-3 scales.
TINY = dict(stem_blocks=2, stem_planes=8, modules=(1, 1, 2), blocks=2,
            channels=(4, 8, 12, 16))


def _timm(cfg):
  import torch  # pylint: disable=g-import-not-at-top
  hr = upstream.timm_module("hrnet")
  timm_cfg = dict(stem_width=64, stage1=dict(
      num_modules=1, num_branches=1, block_type="BOTTLENECK",
      num_blocks=(cfg["stem_blocks"],), num_channels=(cfg["stem_planes"],),
      fuse_method="SUM"))
  for s in range(3):
    n = s + 2
    timm_cfg[f"stage{n}"] = dict(
        num_modules=cfg["modules"][s], num_branches=n, block_type="BASIC",
        num_blocks=(cfg["blocks"],) * n, num_channels=cfg["channels"][:n],
        fuse_method="SUM")
  torch.manual_seed(0)
  m = hr.HighResolutionNet(timm_cfg, num_classes=0).eval()
  with torch.no_grad():   # non-trivial BN statistics and affine
    for name, b in list(m.named_parameters()) + list(m.named_buffers()):
      if "bn" in name or ".1." in name or name.endswith(".1.weight"):
        if b.dtype == torch.float32 and b.dim() == 1:
          b.copy_(0.5 + torch.rand_like(b) if "var" in name or
                  name.endswith("weight") else 0.1 * torch.randn_like(b))
  return m


def _timm_branches(m, x):
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    y = torch.from_numpy(x).permute(0, 3, 1, 2)
    y = m.act1(m.bn1(m.conv1(y)))
    y = m.act2(m.bn2(m.conv2(y)))
    return [o.permute(0, 2, 3, 1).numpy() for o in m.stages(y)]


def _ours(sd, fuse=False, variant="W18-small-v2", **kw):
  model = upstream.converted(
      lambda: hrnet.build(variant, img_size=(64, 64), rngs=nnx.Rngs(0),
                          fuse=fuse, **kw),
      hrnet.from_torch, sd)
  model.eval()
  return model


def _rel(got, want):
  err = np.abs(np.asarray(got) - want).max() / np.abs(want).max()
  print(f"{want.shape}: max |err| / max |ref| = {err:.1e}")
  return err


def test_parity_with_timm_hrnet():
  img_size = (64, 96)   # non-square
  m = _timm(TINY)
  sd = {k: v.numpy() for k, v in m.state_dict().items()}
  x = np.random.RandomState(0).randn(2, *img_size, 3).astype(np.float32)
  ref = _timm_branches(m, x)
  out = upstream.run(_ours(sd, **TINY), x)
  assert sorted(out) == [4, 8, 16, 32]
  for (stride, got), want in zip(sorted(out.items()), ref):
    assert got.shape == want.shape, stride
    assert _rel(got, want) < RTOL, f"stride {stride}: {_rel(got, want):.2e}"
  # CTAL's fuse: bilinear (align_corners=False) to 1/4 and concat.
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  t = [torch.from_numpy(r).permute(0, 3, 1, 2) for r in ref]
  fused = torch.cat([t[0]] + [F.interpolate(u, size=t[0].shape[2:],
                                            mode="bilinear",
                                            align_corners=False)
                              for u in t[1:]], 1).permute(0, 2, 3, 1).numpy()
  got = upstream.run(_ours(sd, fuse=True, **TINY), x)
  assert list(got) == [4] and got[4].shape[-1] == sum(TINY["channels"])
  assert _rel(got[4], fused) < RTOL


def test_official_w18_small_v2_keys_convert():
  """The full W18-small-v2 (timm's == the official .pth keys, head
  included) converts strictly; a missing key is named."""
  hr = upstream.timm_module("hrnet")
  m = hr.hrnet_w18_small_v2(pretrained=False)
  sd = {k: v.numpy() for k, v in m.state_dict().items()}
  model = _ours(sd, fuse=True)
  assert model.out_channels == (270,)
  assert hrnet.features("W18-small-v2") == {4: 18, 8: 36, 16: 72, 32: 144}
  n = sum(np.size(v) for _, v in nnx.to_flat_state(nnx.state(model,
                                                              nnx.Param)))
  assert 3.8e6 < n < 3.9e6   # methods.md b.2: 3.86 M
  del sd["stage4.1.fuse_layers.3.0.2.0.weight"]
  with pytest.raises(torch_utils.ConversionError,
                     match=r"stage4\.1\.fuse_layers\.3\.0\.2\.0\.weight"):
    _ours(sd)


def test_baseline_config_with_hrnet_predicts_full_size_maps():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mtdense_jax import config_check  # pylint: disable=g-import-not-at-top
  from tests.conftest import REPO  # pylint: disable=g-import-not-at-top
  cfg = config_check.load_config_file(
      str(REPO / "configs" / "synthetic_baseline.py") +
      ":encoder=hrnet,runlocal")
  assert cfg.model.encoder == "hrnet"
  model = nnx.eval_shape(lambda: multitask.build_model(
      cfg.model, task_outputs={"a": 3}, img_size=cfg.data.image_size,
      rngs=nnx.Rngs(0)))
  out = nnx.eval_shape(lambda m, x: m(x), model,
                       jnp.zeros((2, *cfg.data.image_size, 3)))["final"]
  assert out["a"].shape == (2, *cfg.data.image_size, 3)
