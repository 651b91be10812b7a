"""Semantic segmentation: InvPT's CE loss and the pooled-IoU mIoU.

Loss: prismformore/Multi-Task-Transformer (commit 870c6be1)
InvPT/losses/loss_functions.py CrossEntropyLoss(ignore_index=255).
Post-processing: InvPT/utils/utils.py get_output (argmax).
Metric: InvPT/evaluation/eval_semseg.py SemsegMeter and
SimonVandenhende/Multi-Task-Learning-PyTorch (commit ed3d9ac1)
evaluation/eval_semseg.py (SemsegMeter, eval_semseg). Both protocols give the
same number on the same label map: tp/fp/fn pooled over every non-ignored
pixel, IoU_c = tp / max(tp + fp + fn, 1e-8), mean over ALL classes
(methods.md d.2). The offline path writes argmax as a uint8 PNG, which is
lossless for class ids < 256, so "mtl" needs nothing extra.

``protocol="mtan"``: Dimitri-Sinodinos/CTAL (commit b2d3bb97)
code_cnn/evaluation/eval_semseg.py (MTAN style, methods.md b.5): the same
pooled confusion count, but the mean IoU skips classes absent from gt and
prediction (nanmean) and pixel accuracy is reported too
(`common.mtan_scores`). CTAL's CNN loss, NLL of log-softmax with
ignore_index=-1, is this task's CE once the MTAN builders store -1 as 255.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from mtdense_jax.tasks import common


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task(common.ClassificationTask):
  """Per-pixel classification into num_classes classes (255 = ignore)."""

  name: ClassVar[str] = "semseg"
  # InvPT re-draws train crops dominated by one semseg class.
  balances_crop: ClassVar[bool] = True
  protocols: ClassVar[tuple[str, ...]] = ("invpt", "mtl", "mtan")
