"""TaskPrompter weight conversion from files written here.

* A released-style checkpoint: ``torch.save({"model": {"module." + key: ...},
  ...})`` with the reference's real key tree at small size (the golden
  case's state_dict), read back by the weights-only loader.
* The ImageNet init: an original (augreg) ViT ``.npz`` of a smaller square
  grid, whose pos-embed is resized bicubically (checked against PyTorch) and
  whose per-head q/k/v are fused; the prompts and token_trans keep their own
  initialisation.
"""

from __future__ import annotations

from flax import nnx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtdense_jax.convert import torch_utils
from mtdense_jax.models import multitask
from mtdense_jax.models.decoders import taskprompter
from mtdense_jax.models.encoders import vit
from tests import taskprompter_testing as tpt
from tests.test_convert import _vit_npz


def _flat(state) -> dict[str, np.ndarray]:
  return {"/".join(map(str, p)): np.asarray(v[...])
          for p, v in nnx.to_flat_state(state)}


def test_released_checkpoint_file(tmp_path, golden):
  npz, meta = golden("taskprompter_pascal_a")
  sd = tpt.state_dict(npz)
  torch.save({"model": {f"module.{k}": torch.from_numpy(np.array(v))
                        for k, v in sd.items()},
              "optimizer": {"state": {}}, "epoch": 3},
             tmp_path / "checkpoint.pth.tar")
  loaded = torch_utils.load_state_dict(tmp_path / "checkpoint.pth.tar")
  model = nnx.eval_shape(lambda: tpt.build_from_sidecar(meta, nnx.Rngs(0)))
  got = _flat(taskprompter.from_torch(loaded, model))
  # Layouts, checked independently of the converter's rename table.
  np.testing.assert_array_equal(
      got["encoder/blocks/1/attn/qkv/kernel"],
      sd["backbone.blocks.1.attn.qkv.weight"].T)
  np.testing.assert_array_equal(
      got["encoder/blocks/0/attn/token_trans/kernel"],
      sd["backbone.blocks.0.attn.token_trans.weight"].T)
  np.testing.assert_array_equal(
      got["decoder/fea_fuse/2/sal/conv1/kernel"],
      sd["backbone.fea_fuse.2.sal.1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(got["decoder/fea_fuse/0/edge/bn/var"],
                                sd["backbone.fea_fuse.0.edge.2.running_var"])
  np.testing.assert_array_equal(
      got["decoder/ctr_attn_conv/3/normals/conv2/bias"],
      sd["backbone.ctr_attn_conv.3.normals.2.bias"])
  np.testing.assert_array_equal(got["decoder/heads/semseg/bn/scale"],
                                sd["heads.semseg.mt_proj.1.weight"])
  np.testing.assert_array_equal(got["encoder/pos_embed"],
                                sd["backbone.pos_embed"])
  assert len(got) == len(sd) - sum(k.endswith("num_batches_tracked")
                                   for k in sd)


IMG = (64, 96)          # 4 x 6 tokens; the "pretrained" ViT has 6 x 6.


def _prompt_model(seed: int) -> multitask.MultiTaskModel:
  cfg = dict(encoder="taskprompter", variant="Ti/16", decoder="taskprompter",
             encoder_kw=dict(width=16, depth=3,
                             num_heads=2, taps=(1, 2, 3), chan_nheads=4),
             decoder_kw=dict(embed_dim=8, final_embed_dim=8))
  return multitask.build_model(cfg, task_outputs={"semseg": 3, "normals": 3},
                               img_size=IMG, rngs=nnx.Rngs(seed))


def test_vit_npz_init(tmp_path):
  src = vit.build("Ti/16", img_size=(96, 96), rngs=nnx.Rngs(1), width=16,
                  depth=3, num_heads=2, taps=(1, 2, 3))
  np.savez(tmp_path / "augreg.npz", **_vit_npz(src))
  z = torch_utils.load_state_dict(tmp_path / "augreg.npz")
  model = _prompt_model(0)
  before = _flat(nnx.state(model.encoder))
  nnx.update(model.encoder, taskprompter.from_vit_init(vit.npz_to_torch(z),
                                                       model))
  enc, after = model.encoder, _flat(nnx.state(model.encoder))
  for i in range(3):
    for name in ("attn/qkv/kernel", "attn/qkv/bias", "attn/proj/kernel",
                 "mlp/fc2/kernel", "norm1/scale", "norm2/bias"):
      key = f"blocks/{i}/{name}"
      np.testing.assert_allclose(after[key], _flat(nnx.state(src))[key],
                                 err_msg=key)
    for name in ("attn/token_trans/kernel", "attn/token_trans1/bias"):
      np.testing.assert_array_equal(after[f"blocks/{i}/{name}"],
                                    before[f"blocks/{i}/{name}"])
  np.testing.assert_array_equal(after["task_prompts"], before["task_prompts"])
  np.testing.assert_array_equal(after["patch_embed/proj/kernel"],
                                np.asarray(src.patch_embed.proj.kernel[...]))
  # pos_embed: slot 0 kept, the 6x6 grid resized like PyTorch bicubic.
  pos = np.asarray(src.pos_embed[...])
  grid = torch.from_numpy(np.array(pos[0, 1:]).reshape(1, 6, 6, 16)).permute(
      0, 3, 1, 2)
  ref = F.interpolate(grid.double(), size=enc.grid, mode="bicubic",
                      align_corners=False).permute(0, 2, 3, 1).reshape(
                          1, -1, 16).numpy()
  np.testing.assert_allclose(after["pos_embed"][:, 1:], ref, atol=1e-6)
  np.testing.assert_array_equal(after["pos_embed"][:, :1], pos[:, :1])


def test_vit_init_missing_key_is_named():
  src = vit.build("Ti/16", img_size=IMG, rngs=nnx.Rngs(1), width=16, depth=3,
                  num_heads=2, taps=(1, 2, 3))
  sd = vit.npz_to_torch(_vit_npz(src))
  del sd["blocks.2.norm2.weight"]
  sd["blocks.1.mlp.fc1.bias"] = np.zeros(3, np.float32)
  model = _prompt_model(0)   # Concrete: the prompts keep their values.
  with pytest.raises(torch_utils.ConversionError) as err:
    taskprompter.from_vit_init(sd, model)
  assert "blocks.2.norm2.weight" in str(err.value)
  assert "blocks.1.mlp.fc1.bias" in str(err.value)


def test_cli_converter_plugin_reads_released_heads(tmp_path, golden):
  """``--from taskprompter`` is found through the decoder plugin and sizes
  the heads from the checkpoint's ``heads.<task>.linear_pred``."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from mtdense_jax.convert import __main__ as cli  # pylint: disable=g-import-not-at-top
  npz, meta = golden("taskprompter_pascal_a")
  sd = tpt.state_dict(npz)
  torch.save({"model": {f"module.{k}": torch.from_numpy(np.array(v))
                        for k, v in sd.items()}}, tmp_path / "tp.pth.tar")
  config = ml_collections.ConfigDict(dict(
      model=tpt.model_config(meta), tasks=list(tpt.task_outputs(meta)),
      data=dict(name="synthetic_scenes",
                image_size=tuple(meta["config"]["image_size_hw"])),
      eval=dict(protocol="invpt"), seed=0))
  assert set(cli.converters(config.model)) >= {"taskprompter", "timm", "npz"}
  model = cli.convert("taskprompter", str(tmp_path / "tp.pth.tar"), config)
  got = _flat(nnx.state(model))
  for t, n in tpt.task_outputs(meta).items():
    assert got[f"decoder/heads/{t}/linear_pred/kernel"].shape[-1] == n
  np.testing.assert_array_equal(got["encoder/pos_embed"],
                                sd["backbone.pos_embed"])
  config.tasks = config.tasks[:-1]
  with pytest.raises(ValueError, match="has heads for"):
    cli.convert("taskprompter", str(tmp_path / "tp.pth.tar"), config)
