"""The ECS training recipe as config data: the four stages of one config.

Facts from sarashoouri/EfficientMTL@6946429 (shared/notes/
efficient_sharing.md section 5): base-task fine-tune (AdamW, layer decay
0.75, no decay on 1-D tensors / global token / pos_emb, cosine with warm-up,
drop-path 0.1), then per sub-task

  step1  deltas: AdamW(lr, wd 1e-6; no decay on names with ``bias``,
         ``global_tokens``, ``pos_emb``; LayerNorm weights ARE decayed, the
         reference's no-decay substring never matches them); gate logits:
         AdamW(0.1, torch's default wd 0.01), their gradients clipped to
         global norm 10 per sub-task model (delta gradients never are); both
         PolynomialLR(120000, 0.9) per iteration (clamped at 0 past the
         horizon: optax's polynomial schedule); loss w_t task + sparsity_pen
         * L0
  step2  frozen mask, fresh AdamW on the kept deltas, no L0
  step3  as step2 plus mu * the activation L1 to the base

Each stage restores everything from the previous one (params and carried
state, so Step 2 reads Step 1's last gate sample). The base task keeps
weight 0 after stage 0; its head and the base backbone are frozen.
A helper module of the ecs_vit plugin (no ``build``: not a plugin itself).
"""

from __future__ import annotations

from typing import Mapping, Sequence

POLY_HORIZON = 120000
ALPHA_LR, ALPHA_WD, ALPHA_CLIP = 0.1, 0.01, 10.0
DELTA_WD = 1e-6


def _sub_groups(task: str, lr: float, *, gates: bool, delta_wd: float,
                alpha_clip: float) -> list[dict]:
  """The reference's optimiser groups of one sub-task model."""
  own = f"encoder/(delta|log_alpha|log_alpha_tensor)/{task}/"
  groups = []
  if gates:
    groups.append(dict(name=f"{task}_gates",
                       match=f"^encoder/log_alpha(_tensor)?/{task}/",
                       optimizer="adamw", lr=ALPHA_LR,
                       weight_decay=ALPHA_WD, clip=alpha_clip))
  groups.append(dict(
      name=f"{task}_no_decay",
      match=(f"^(encoder/delta/{task}/(global_tokens|pos_emb|.*_b)$|"
             f"decoder/heads/{task}/p/.*_b$)"),
      optimizer="adamw", lr=lr, weight_decay=0.0))
  groups.append(dict(name=f"{task}_decay",
                     match=f"^({own}|decoder/heads/{task}/)",
                     optimizer="adamw", lr=lr, weight_decay=delta_wd))
  return groups


def stages(base_task: str, sub_tasks: Sequence[str], *,
           steps: Sequence[int], loss_weights: Mapping[str, float],
           lr: Mapping[str, float], step3_lr: Mapping[str, float],
           sparsity_pen: Mapping[str, float],
           act_coef: Mapping[str, float], base_lr: float,
           base_warmup: int, base_drop_path: float, depth: int,
           poly_horizon: int = POLY_HORIZON, delta_wd: float = DELTA_WD,
           alpha_clip: float = ALPHA_CLIP) -> tuple[dict, ...]:
  """``config.stages`` for base fine-tune + Steps 1-3 (names base, step1,
  step2, step3). ``steps`` has 4 entries; ``lr``/``step3_lr`` etc. are per
  sub-task. ``poly_horizon`` is the PolynomialLR horizon of Steps 1-3;
  ``delta_wd`` / ``alpha_clip`` the delta weight decay and the gate clip."""
  if len(steps) != 4:
    raise ValueError(f"ecs stages need 4 step counts, got {steps}")
  subs = tuple(sub_tasks)
  sub_re = "|".join(subs)
  frozen_after_base = (r"^encoder/base/", f"^decoder/heads/{base_task}/")
  gates_re = r"^encoder/log_alpha(_tensor)?/"
  weights = {base_task: 0.0, **{t: float(loss_weights[t]) for t in subs}}

  def sub_stage(name, init_from, mode, n, lrs, extra, gates, act=False):
    groups = [g for t in subs for g in _sub_groups(
        t, lrs[t], gates=gates, delta_wd=delta_wd, alpha_clip=alpha_clip)]
    freeze = frozen_after_base + (() if gates else (gates_re,))
    return dict(
        name=name, steps=n, init_from=init_from, freeze=freeze,
        override={"model.encoder_kw.mode": mode,
                  "model.encoder_kw.act_penalty": act,
                  "model.encoder_kw.drop_path_rate": 0.0,
                  "optim.groups": tuple(groups),
                  "optim.layer_decay": {},
                  "optim.schedule": "poly", "optim.poly_power": 0.9,
                  "optim.warmup_steps": 0,
                  "optim.total_steps": int(poly_horizon),
                  "optim.grad_clip_norm": None,
                  "loss.extra_weights": dict(extra),
                  "weighting.name": "fixed",
                  "weighting.kw": {"weights": weights}})

  base = dict(
      name="base", steps=int(steps[0]),
      freeze=("^encoder/(delta|log_alpha|log_alpha_tensor)/",
              f"^decoder/heads/({sub_re})/"),
      override={"model.encoder_kw.mode": "dense",
                "model.encoder_kw.drop_path_rate": float(base_drop_path),
                "optim.lr": float(base_lr), "optim.weight_decay": 1e-6,
                "optim.schedule": "cosine",
                "optim.warmup_steps": int(base_warmup),
                "optim.groups": (dict(
                    name="no_decay", weight_decay=0.0,
                    match=r"(_b|norm\d?_w|global_tokens|pos_emb)$"),),
                "optim.layer_decay": {
                    "rate": 0.75, "num_layers": depth,
                    "regex": r"^encoder/base/b(\d+)_",
                    "embed_regex": r"^encoder/base/"},
                "weighting.name": "fixed",
                "weighting.kw": {"weights": {
                    base_task: 1.0, **{t: 0.0 for t in subs}}}})
  return (
      base,
      sub_stage("step1", "base", "gates", int(steps[1]), lr,
                {f"l0/{t}": sparsity_pen[t] for t in subs}, gates=True),
      sub_stage("step2", "step1", "mask", int(steps[2]), lr, {},
                gates=False),
      sub_stage("step3", "step2", "mask", int(steps[3]), step3_lr,
                {f"act_l1/{t}": act_coef[t] for t in subs}, gates=False,
                act=True),
  )
