"""MT-CP's loss recipe as config data, for the MT-CP configs to call.

Facts from Klodivio355/MT-CP@08c068e (shared/notes/methods.md a.2, a.3):

* per-task losses: semseg/parts NLL ignore 255 (our default), depth L1 that
  also drops gt >= 6.5535 m, normals masked MSE, saliency HED-balanced BCE
  on a 1-channel head (`task_kw`); the evaluation also drops depth gt
  >= 6.5535 m (``max_depth``: the depth metrics are then named for it);
* deep supervision outside the weighting: total = W(finals) + sum of every
  aux loss / 2 (`loss_config`);
* two bugs of the released training loop (``traine/train_utils.py``), kept
  OFF unless ``released_aux_bugs=True``: NYUD scores the normals aux heads
  with the depth L1 loss (``depth_loss(output['charlie_*'],
  targets['normals'])``); PASCAL adds only the last human-parts aux loss
  (``intermediate_loss_2`` instead of the running sum), i.e. the head on
  the second trace-back step (pred_1, H/8: ``beta_human_4``). They become
  the generic ``config.loss.aux_loss_from`` / ``aux_reduce`` options; "last"
  is the aux head whose name sorts last, so the model must name its pred_1
  head to sort after its pred_0 head (e.g. "aux0", "aux1");
* the epoch-level LPS spread: 7.5 on NYUD, 1.6 on PASCAL (`LPS_SPREAD`).

A helper module of the mtcp decoder plugin (no ``build``: not a plugin).
In a config::

    from mtdense_jax.models.decoders import mtcp_recipe
    c.task_kw = mtcp_recipe.task_kw(c.tasks)
    c.loss = mtcp_recipe.loss_config(
        c.tasks, released_aux_bugs=arg.released_aux_bugs)
"""

from __future__ import annotations

from typing import Sequence

import ml_collections as mlc

DEPTH_CUTOFF = 6.5535   # m: 65535 (uint16 max) in 1e-4 m units
AUX_WEIGHT = 0.5
LPS_SPREAD = {"nyud": 7.5, "pascal": 1.6}


def task_kw(tasks: Sequence[str]) -> mlc.ConfigDict:
  """``config.task_kw`` for the released per-task losses and depth metric
  range, for whichever of these tasks are configured."""
  options = {
      "depth": dict(loss_max_depth=DEPTH_CUTOFF, max_depth=DEPTH_CUTOFF),
      "normals": dict(loss_type="mse"),
      "sal": dict(loss_type="hed_bce"),
  }
  return mlc.ConfigDict({t: options[t] for t in tasks if t in options})


def aux_bug_options(tasks: Sequence[str]) -> tuple[dict, dict]:
  """(aux_loss_from, aux_reduce) reproducing the released loop's deep
  supervision bugs for the configured tasks."""
  loss_from, reduce = {}, {}
  if "normals" in tasks and "depth" in tasks:
    loss_from["normals"] = "depth"    # NYUD: depth L1 on the normals aux
  if "human_parts" in tasks:
    reduce["human_parts"] = "last"    # PASCAL: only the last parts aux
  return loss_from, reduce


def loss_config(tasks: Sequence[str], *,
                released_aux_bugs: bool = False) -> mlc.ConfigDict:
  """``config.loss``: aux terms outside the weighting at 1/2, plus the
  released bugs when asked (the switch of the MT-CP configs)."""
  loss_from, reduce = (aux_bug_options(tasks) if released_aux_bugs
                       else ({}, {}))
  return mlc.ConfigDict(dict(
      aux_weight=AUX_WEIGHT, aux_weights=mlc.ConfigDict(), aux_mode="outside",
      extra_weights=mlc.ConfigDict(),
      aux_loss_from=mlc.ConfigDict(loss_from),
      aux_reduce=mlc.ConfigDict(reduce)))

