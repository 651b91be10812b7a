"""What an ECS run measures: weight sparsity of the sub-task deltas,
activation sharing and MACs by our accounting, and the end-of-run summary
of the sparsity/accuracy trade-off across the stages.

A helper module of the ecs_vit plugin (no ``build``); ecs_vit's
``stages_report`` calls :func:`stages_summary` after the last stage, and
benchmarks/ecs_sharing.py reuses the measurements. MACs follow OUR
accounting (shared/notes/efficient_sharing.md section 6; the reference has
no FLOP counter): per linear layer nnz(dx) d_out + N nnz(dW) + N d_out adds,
attention core recomputed for changed query rows (all rows once any key
changed), heads dense.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

# (linear layer, the block site holding its input)
LINEARS = (("qkv", "norm1"), ("proj", "attn_out"), ("fc1", "norm2"),
           ("fc2", "act"))


def restore_stage_model(config, stage: Mapping[str, Any],
                        workdir: pathlib.Path, exp=None):
  """(stage config, experiment, model in eval mode) with the params of the
  stage's latest checkpoint in ``workdir/<stage name>``. ``exp`` defaults
  to one built from the stage's dataset_meta.json (no dataset needed)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from mtdense_jax.train import checkpointing as ckpt  # pylint: disable=g-import-not-at-top
  from mtdense_jax.train import loop  # pylint: disable=g-import-not-at-top
  from mtdense_jax.train import sharding as shd  # pylint: disable=g-import-not-at-top
  from mtdense_jax.train import stages as stages_lib  # pylint: disable=g-import-not-at-top
  from mtdense_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  sdir = workdir / stage["name"]
  cfg = stages_lib.stage_config(config, stage, workdir)
  if exp is None:
    meta = json.loads((sdir / "dataset_meta.json").read_text())
    exp = loop.build_experiment(cfg, meta,
                                shd.make_mesh(None, jax.devices()[:1]))
  defs, _, _ = state_lib.model_defs(exp.factory, loop.trainable(cfg))
  _, params, stats = state_lib.split_model(exp.factory(), defs.trainable)
  repl = shd.replicated(exp.mesh)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
      {"params": params, "batch_stats": stats})
  restored, _ = ckpt.restore_params(sdir / "checkpoints", abstract,
                                    log=lambda _: None)
  model = nnx.merge(defs.eval, restored["params"], restored["batch_stats"])
  model.eval()
  return cfg, exp, model


def weight_sparsity(enc) -> dict[str, dict]:
  """Per sub-task: 1 - kept / entries of its delta mask, over every
  backbone tensor with pos_emb (the reference scripts' "sparsity ratio in
  encoder") and without it (pos_emb can never move), kept fraction per
  layer (0 = stem), and the masks themselves."""
  from mtdense_jax.models.encoders import ecs_vit  # pylint: disable=g-import-not-at-top
  out = {}
  for t in enc.sub_tasks:
    m = {n: np.asarray(v) for n, v in enc.mask(t).items()}
    total = sum(v.size for v in m.values())
    kept = sum(int(v.sum()) for v in m.values())
    pos, pos_kept = m["pos_emb"].size, int(m["pos_emb"].sum())
    layers = np.zeros(enc.depth + 1)
    sizes = np.zeros(enc.depth + 1)
    for n, v in m.items():
      layers[ecs_vit.layer_of(n)] += v.sum()
      sizes[ecs_vit.layer_of(n)] += v.size
    out[t] = {"with_pos_emb": 1 - kept / total,
              "without_pos_emb": 1 - (kept - pos_kept) / (total - pos),
              "per_layer_kept": layers / sizes, "masks": m}
  return out


def head_macs(enc, dec, task: str) -> float:
  n = enc.grid[0] * enc.grid[1]
  p = dec.heads[task].weights()
  e = p["proj_w"].shape[1]
  c = e // 16
  out = p["final_w"].shape[1]
  depth = dec.heads[task].depth
  return n * enc.width * e + depth * 16 * n * (49 * c + 8 * c * c) + \
      16 * n * c * out


def dense_backbone_macs(enc) -> float:
  n = enc.grid[0] * enc.grid[1] + 1
  c, hid = enc.width, enc.shapes["b0_fc1_w"][1]
  patch = (n - 1) * enc.patch ** 2 * 3 * c
  per_block = n * c * 3 * c + n * c * c + 2 * n * c * hid + 2 * n * n * c
  return patch + enc.depth * per_block


def shared_macs(enc, task, masks, base_sites, sub_sites) -> float:
  """Our accounting of one sub-task's incremental backbone MACs per image."""
  n = enc.grid[0] * enc.grid[1] + 1
  m = masks[task]
  c = enc.width
  total = (n - 1) * float(m["patch_w"].sum())   # dx = 0 at the input
  for i in range(enc.depth):
    for lin, inp in LINEARS:
      dx = np.abs(np.asarray(sub_sites[i][inp] - base_sites[i][inp]))
      nnz_dx = float((dx > 0).sum()) / dx.shape[0]
      d_out = enc.shapes[f"b{i}_{lin}_w"][1]
      total += nnz_dx * d_out + n * float(m[f"b{i}_{lin}_w"].sum()) \
          + n * d_out
    qkv_d = np.abs(np.asarray(sub_sites[i]["qkv"] - base_sites[i]["qkv"]))
    qkv_d = qkv_d.reshape(qkv_d.shape[0], n, 3, c).max(axis=0)
    rows = float((qkv_d[:, 0] > 0).any(-1).sum())
    k_changed = bool((qkv_d[:, 1] > 0).any())
    v_rows = float((qkv_d[:, 2] > 0).any(-1).sum())
    if k_changed:
      total += 2 * n * n * c
    else:
      total += rows * n * c + rows * n * c + (n - rows) * v_rows * c
  return total


def activation_sharing(enc, dec, tasks, masks, image: jax.Array,
                       threshold: float) -> dict[str, Any]:
  """At one threshold for every block: per sub-task the fraction of
  linear-layer inputs that differ from the base's (the dx a sharing
  forward must compute with), and the MACs of all tasks together versus
  independent single-task models and one dense multi-task pass."""
  base_sites = []
  enc.backbone(enc.base_weights(), image, sites=base_sites)
  heads = sum(head_macs(enc, dec, t) for t in tasks)
  bb = dense_backbone_macs(enc)
  total, changed = bb + heads, {}
  for t in enc.sub_tasks:
    sub_sites = []
    enc.backbone(enc.sub_weights(t), image, sites=sub_sites,
                 share=(base_sites, [jnp.float32(threshold)] * enc.depth),
                 stats=[])
    total += shared_macs(enc, t, masks, base_sites, sub_sites)
    diff = [float(jnp.mean((s[inp] != b[inp]).astype(jnp.float32)))
            for s, b in zip(sub_sites, base_sites) for _, inp in LINEARS]
    changed[t] = float(np.mean(diff))
  indep = len(tasks) * bb + heads
  return {"changed_inputs": changed, "macs": total,
          "independent_macs": indep, "multitask_macs": bb + heads}


def _last_metrics(path: pathlib.Path) -> dict[str, float]:
  if not path.exists():
    return {}
  rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
  return rows[-1] if rows else {}


def stages_summary(config, workdir: str | pathlib.Path,
                   threshold: float = 0.0) -> str:
  """The trade-off table of a finished ECS run: per stage each task's
  primary validation metric (and its change against the ``dense`` stage,
  when there is one; "-" for a task the stage trains with weight 0), the
  weight sparsity of each sub-task's delta with / without pos_emb in the
  gated stages, and for the last stage the activation sharing at
  ``threshold`` (0: exact, predictions unchanged) with our MAC count."""
  workdir = pathlib.Path(workdir)
  lines = ["", f"== ECS summary: sparsity / accuracy trade-off ({workdir})"]
  rows, sparsity, last = {}, {}, None
  for stage in config.stages:
    name = stage["name"]
    if not (workdir / name / "checkpoints").exists():
      continue
    cfg, exp, model = restore_stage_model(config, stage, workdir)
    weights = dict(cfg.weighting.get("kw", {}).get("weights", {}) or {})
    metrics = _last_metrics(workdir / name / "metrics.jsonl")
    trained = {t: weights.get(t, 1.0) != 0 for t in exp.tasks}
    rows[name] = (cfg.model.encoder_kw.mode, metrics, trained)
    if cfg.model.encoder_kw.mode in ("gates", "mask"):
      sparsity[name] = weight_sparsity(model.encoder)
    last = (name, cfg, exp, model)
  if last is None:
    return "\n".join(lines + ["  (no finished stage)"])
  name, cfg, exp, model = last
  tasks, subs = list(exp.tasks), list(model.encoder.sub_tasks)
  keys = [f"{t}/{task.primary_metric}" for t, task in exp.tasks.items()]
  ref = rows["dense"][1] if "dense" in rows else {}
  lines.append("Primary validation metric per task after each stage" + (
      " (in brackets: change vs stage 'dense', the sub-tasks fine-tuned "
      "with dense deltas)" if ref else "") + ":")
  width = max(len(k) for k in keys) + 12
  lines.append(f"  {'stage':8s}{'mode':7s}" +
               "".join(f"{k:>{width}}" for k in keys))
  for stage, (mode, metrics, trained) in rows.items():
    cells = []
    for t, k in zip(tasks, keys):
      v = metrics.get(k) if trained[t] else None
      cell = "-" if v is None else f"{v:.4f}"
      if v is not None and k in ref and stage != "dense" and t in subs:
        cell += f" ({v - ref[k]:+.4f})"
      cells.append(f"{cell:>{width}}")
    lines.append(f"  {stage:8s}{mode:7s}" + "".join(cells))
  lines.append("Weight sparsity of each sub-task's delta, 1 - kept/entries, "
               "with pos_emb / without pos_emb (stage 'dense': 0):")
  lines.append(f"  {'stage':8s}" + "".join(f"{t:>22s}" for t in subs))
  for stage, sp in sparsity.items():
    lines.append(f"  {stage:8s}" + "".join(
        f"{sp[t]['with_pos_emb']:>13.4f} / {sp[t]['without_pos_emb']:.4f}"
        for t in subs))
  if name in sparsity:
    from mtdense_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    batch = next(iter(pipeline.make_eval_iter(
        cfg.data, exp.tasks, split=cfg.data.eval_split,
        global_batch_size=cfg.eval.batch_size)))
    masks = {t: s["masks"] for t, s in sparsity[name].items()}
    act = activation_sharing(model.encoder, model.decoder, tasks, masks,
                             jnp.asarray(batch["image"]), threshold)
    lines.append(
        f"Activation sharing in stage {name!r} at threshold {threshold:g} "
        f"({len(batch['image'])} validation images): fraction of "
        "linear-layer inputs that differ from the base task's")
    lines.append("  " + "   ".join(f"{t} {v:.4f}" for t, v in
                                   act["changed_inputs"].items()))
    lines.append(
        f"  MACs per image, all {len(tasks)} tasks (our accounting, notes "
        f"section 6): {act['macs'] / 1e6:.3f} M = "
        f"{act['macs'] / act['independent_macs']:.3f} of independent "
        f"single-task models ({act['independent_macs'] / 1e6:.3f} M), "
        f"{act['macs'] / act['multitask_macs']:.3f} of one dense "
        f"multi-task pass ({act['multitask_macs'] / 1e6:.3f} M)")
  return "\n".join(lines)
