"""Weight conversion: safe loading, key checks, bicubic resize, CLI.

The tests write their own checkpoint files (torch.save, safetensors, npz)
from small random JAX models, using an independent inverse mapping written
here, and check that converting them back reproduces the model's outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy
import torch
import torch.nn.functional as F

from mtdense_jax.convert import __main__ as cli
from mtdense_jax.convert import torch_utils
from mtdense_jax.models.encoders import vit
from mtdense_jax.train import checkpointing

IMG = (32, 64)


def _vit(seed: int, img=IMG, **kw) -> vit.ViT:
  cfg = dict(width=16, depth=3, num_heads=2, taps=(1, 2, 3), **kw)
  return vit.build("Ti/16", img_size=img, rngs=nnx.Rngs(seed), **cfg)


def _torch_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """Independent inverse: our params -> timm names and torch layouts."""
  leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    v = np.asarray(var[...])
    if path[-1] == "kernel":
      v = v.T if v.ndim == 2 else v.transpose(3, 2, 0, 1)
    mods = [str(p) for p in path[:-1]]
    # Contiguous copies: safetensors' numpy writer dumps raw buffers.
    key = ".".join(mods + [leaf.get(path[-1], path[-1])])
    out[key] = np.ascontiguousarray(v)
  return out


def _vit_npz(model: vit.ViT) -> dict[str, np.ndarray]:
  """Independent inverse: our params -> original ViT .npz names/layouts."""
  c, nh = model.out_channels[0], model.blocks[0].attn.num_heads
  hd = c // nh
  z = {"cls": model.cls_token[...], "embedding/kernel":
       model.patch_embed.proj.kernel[...],
       "embedding/bias": model.patch_embed.proj.bias[...],
       "Transformer/posembed_input/pos_embedding": model.pos_embed[...],
       "Transformer/encoder_norm/scale": model.norm.scale[...],
       "Transformer/encoder_norm/bias": model.norm.bias[...],
       "head/kernel": np.zeros((c, 10)), "head/bias": np.zeros(10)}
  for i, blk in enumerate(model.blocks):
    p = f"Transformer/encoderblock_{i}/"
    qkv_k = np.asarray(blk.attn.qkv.kernel[...]).reshape(c, 3, nh, hd)
    qkv_b = np.asarray(blk.attn.qkv.bias[...]).reshape(3, nh, hd)
    for j, n in enumerate(("query", "key", "value")):
      z[f"{p}MultiHeadDotProductAttention_1/{n}/kernel"] = qkv_k[:, j]
      z[f"{p}MultiHeadDotProductAttention_1/{n}/bias"] = qkv_b[j]
    z[f"{p}MultiHeadDotProductAttention_1/out/kernel"] = np.asarray(
        blk.attn.proj.kernel[...]).reshape(nh, hd, c)
    z[f"{p}MultiHeadDotProductAttention_1/out/bias"] = blk.attn.proj.bias[...]
    for ours, theirs in ((blk.norm1, "LayerNorm_0"), (blk.norm2,
                                                      "LayerNorm_2")):
      z[f"{p}{theirs}/scale"], z[f"{p}{theirs}/bias"] = ours.scale[...], \
          ours.bias[...]
    for j, fc in enumerate((blk.mlp.fc1, blk.mlp.fc2)):
      z[f"{p}MlpBlock_3/Dense_{j}/kernel"] = fc.kernel[...]
      z[f"{p}MlpBlock_3/Dense_{j}/bias"] = fc.bias[...]
  return {k: np.asarray(v, np.float32) for k, v in z.items()}


def _same_forward(a: nnx.Module, b: nnx.Module) -> None:
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, *IMG, 3)),
                  jnp.float32)
  for ya, yb in zip(a(x)["maps"], b(x)["maps"]):
    np.testing.assert_allclose(np.asarray(ya), np.asarray(yb), atol=1e-6)


@pytest.mark.parametrize("n_in,n_out", [((7, 7), (5, 9)), ((24, 24),
                                                          (28, 36)),
                                        ((4, 6), (4, 6)), ((6, 3), (2, 8))])
def test_bicubic_matches_torch(n_in, n_out):
  grid = np.random.default_rng(0).normal(size=(*n_in, 3))
  ours = torch_utils.resize_bicubic(grid, n_out)
  ref = F.interpolate(torch.from_numpy(grid).permute(2, 0, 1)[None],
                      size=n_out, mode="bicubic", align_corners=False)
  np.testing.assert_allclose(ours, ref[0].permute(1, 2, 0).numpy(),
                             atol=1e-12)


def test_resize_pos_embed_keeps_cls():
  pos = np.random.default_rng(0).normal(size=(1, 1 + 16, 4)).astype(
      np.float32)
  out = torch_utils.resize_pos_embed(pos, (2, 4))
  assert out.shape == (1, 1 + 8, 4)
  np.testing.assert_array_equal(out[:, 0], pos[:, 0])
  ref = F.interpolate(torch.from_numpy(pos[0, 1:].reshape(4, 4, 4)).permute(
      2, 0, 1)[None], size=(2, 4), mode="bicubic", align_corners=False)
  np.testing.assert_allclose(out[0, 1:].reshape(2, 4, 4),
                             ref[0].permute(1, 2, 0).numpy(), atol=1e-6)


class _Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  torch.save({"w": torch.zeros(2), "x": _Evil(marker)}, path)
  with pytest.raises(torch_utils.ConversionError, match="refusing"):
    torch_utils.load_state_dict(path)
  assert not marker.exists()


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_timm_checkpoint_roundtrip(tmp_path, fmt):
  src, dst = _vit(0), _vit(1)
  sd = {f"module.{k}": v for k, v in _torch_state_dict(src).items()}
  sd["module.head.weight"] = np.zeros((10, 16), np.float32)
  path = tmp_path / f"vit.{fmt}"
  if fmt == "pth":
    torch.save({"model": {k: torch.tensor(v) for k, v in sd.items()},
                "epoch": 3}, path)
  else:
    safetensors.numpy.save_file(sd, str(path))
  loaded = torch_utils.strip_prefix(torch_utils.load_state_dict(path))
  nnx.update(dst, vit.from_torch(loaded, dst))
  _same_forward(src, dst)


def test_original_vit_npz(tmp_path):
  src, dst = _vit(0), _vit(1)
  np.savez(tmp_path / "vit.npz", **_vit_npz(src))
  z = torch_utils.load_state_dict(tmp_path / "vit.npz")
  assert vit.is_vit_npz(z)
  nnx.update(dst, vit.from_torch(vit.npz_to_torch(z), dst))
  _same_forward(src, dst)


def test_strict_key_checks_list_names():
  model = _vit(0)
  sd = _torch_state_dict(model)
  sd.pop("blocks.1.mlp.fc2.bias")
  sd["blocks.9.attn.qkv.weight"] = np.zeros(1, np.float32)
  sd["norm.weight"] = np.zeros(5, np.float32)
  with pytest.raises(torch_utils.ConversionError) as err:
    vit.from_torch(sd, model)
  msg = str(err.value)
  assert "missing: blocks.1.mlp.fc2.bias" in msg
  assert "unexpected: blocks.9.attn.qkv.weight" in msg
  assert "shape: norm.weight" in msg


def test_pos_embed_resized_on_load():
  src, dst = _vit(0, img=(64, 64)), _vit(1)
  sd = _torch_state_dict(src)
  with pytest.raises(torch_utils.ConversionError, match="pos_embed"):
    vit.from_torch(sd, dst)
  nnx.update(dst, vit.from_torch(sd, dst, resize_pos_embed=True))
  pos = torch.tensor(sd["pos_embed"][0, 1:].reshape(4, 4, 16))
  ref = F.interpolate(pos.permute(2, 0, 1)[None], size=(2, 4),
                      mode="bicubic", align_corners=False)
  np.testing.assert_allclose(np.asarray(dst.pos_embed[...])[0, 1:],
                             ref[0].permute(1, 2, 0).reshape(8, 16).numpy(),
                             atol=1e-6)


_CONFIG = """
from mtdense_jax import config_defaults
import ml_collections as mlc

def get_config(arg=None):
  c = config_defaults.base_config()
  c.tasks = {tasks!r}
  c.data.image_size = {img!r}
  c.model.encoder = "vit"
  c.model.variant = "Ti/16"
  c.model.encoder_kw = mlc.ConfigDict({enc!r})
  c.model.decoder = {decoder!r}
  c.model.decoder_kw = mlc.ConfigDict({dec!r})
  return c
"""


def _restore(out, model):
  params = {"params": nnx.state(model, nnx.Param),
            "batch_stats": nnx.state(model, nnx.BatchStat)}
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      params)
  restored, step = checkpointing.restore_params(out, abstract)
  assert step == 0
  return params, restored


def _meta(out) -> dict:
  mngr = checkpointing.manager(out, read_only=True, async_save=False)
  meta = mngr.restore(0, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  mngr.close()
  return dict(meta["meta"])


def test_cli_invpt(tmp_path, golden):
  npz, meta = golden("invpt_nyud_a")
  cfg, v, d = meta["config"], meta["config"]["vit"], meta["config"]["decoder"]
  (tmp_path / "cfg.py").write_text(_CONFIG.format(
      tasks=tuple(cfg["tasks"]), img=tuple(cfg["image_size_hw"]),
      enc=dict(width=v["embed_dim"], depth=v["depth"],
               num_heads=v["num_heads"], taps=v["select_list"]),
      decoder="invpt", dec=dict(embed_dim=d["embed_dim"],
                                pred_out_constant=d["PRED_OUT_NUM_CONSTANT"])))
  sd = {f"module.{k[6:]}": torch.from_numpy(np.array(a))
        for k, a in npz.items() if k.startswith("param/")}
  torch.save({"model": sd, "epoch": 1}, tmp_path / "invpt.pth")
  out = tmp_path / "ckpt"
  assert cli.main(["--from", "invpt", "--input", str(tmp_path / "invpt.pth"),
                   "--config", str(tmp_path / "cfg.py"),
                   "--out", str(out)]) == 0
  config = cli.config_check.load_config_file(str(tmp_path / "cfg.py"))
  expected = cli.convert("invpt", str(tmp_path / "invpt.pth"), config)
  assert expected.decoder.tasks == tuple(cfg["tasks"])
  want, got = _restore(out, expected)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  meta = _meta(out)
  heads = {t: cfg["num_output"][t] for t in cfg["tasks"]}
  assert meta["task_outputs"] == heads and meta["tasks"] == list(heads)
  assert meta["dataset_meta"]["num_classes"]["semseg"] == heads["semseg"]
  assert meta["converted_from"] == "invpt"
  key = "multi_task_decoder.invpt.mt_proj.edge.1.running_var"
  np.testing.assert_array_equal(
      np.asarray(expected.decoder.invpt.mt_proj["edge"].bn.var[...]),
      npz[f"param/{key}"])


@pytest.mark.parametrize("source", ["timm-vit", "npz"])
def test_cli_timm_vit_npz(tmp_path, source):
  src = _vit(0, img=(64, 64))
  np.savez(tmp_path / "vit.npz", **_vit_npz(src))
  (tmp_path / "cfg.py").write_text(_CONFIG.format(
      tasks=("semseg", "depth"), img=(64, 128),
      enc=dict(width=16, depth=3, num_heads=2, taps=(1, 2, 3)),
      decoder="invpt", dec=dict(embed_dim=8, pred_out_constant=8)))
  out = tmp_path / "ckpt"
  cli.main(["--source", source, "--input", str(tmp_path / "vit.npz"),
            "--config", str(tmp_path / "cfg.py"), "--out", str(out),
            "--task-outputs", "semseg=5,depth=1"])
  config = cli.config_check.load_config_file(str(tmp_path / "cfg.py"))
  model = cli.convert(source, str(tmp_path / "vit.npz"), config,
                      task_outputs={"semseg": 5, "depth": 1})
  np.testing.assert_array_equal(
      np.asarray(model.encoder.blocks[2].mlp.fc2.kernel[...]),
      np.asarray(src.blocks[2].mlp.fc2.kernel[...]))
  assert model.encoder.pos_embed[...].shape == (1, 1 + 4 * 8, 16)
  want, got = _restore(out, model)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert _meta(out)["task_outputs"] == {"semseg": 5, "depth": 1}


def test_sources_come_from_the_model_plugins(tmp_path):
  """No table in the CLI: the configured plugins offer the sources, and an
  unknown one names what is offered and where it would be found."""
  assert {"timm", "npz"} <= set(cli.converters(
      {"encoder": "vit", "decoder": "baseline"}))
  assert "invpt" in cli.converters({"encoder": "vit", "decoder": "invpt"})
  (tmp_path / "cfg.py").write_text(_CONFIG.format(
      tasks=("semseg",), img=(64, 64), enc=dict(width=16, depth=3,
                                                num_heads=2),
      decoder="baseline", dec={}))
  sd = {"w": np.zeros(2, np.float32)}
  safetensors.numpy.save_file(sd, str(tmp_path / "x.safetensors"))
  with pytest.raises(ValueError, match=r"--from 'invpt': encoder 'vit' and "
                     r"decoder 'baseline' offer \['npz', 'timm', 'timm-vit'\]"
                     r"\. 'invpt' is offered by decoder 'invpt'"):
    cli.main(["--from", "invpt", "--input", str(tmp_path / "x.safetensors"),
              "--config", str(tmp_path / "cfg.py"),
              "--out", str(tmp_path / "o")])
  with pytest.raises(ValueError, match="--from npz needs an original ViT"):
    cli.main(["--from", "npz", "--input", str(tmp_path / "x.safetensors"),
              "--config", str(tmp_path / "cfg.py"),
              "--out", str(tmp_path / "o"), "--task-outputs", "semseg=3"])


def test_running_a_model_imports_no_converter():
  """Models do not import the conversion helpers (nor torch/safetensors)."""
  code = ("import sys; from mtdense_jax.models import multitask; "
          "from mtdense_jax.models.encoders import vit; "
          "from mtdense_jax.models.decoders import invpt, baseline; "
          "bad = [m for m in ('mtdense_jax.convert.torch_utils', "
          "'safetensors', 'torch') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                 env={**os.environ, "JAX_PLATFORMS": "cpu"})
