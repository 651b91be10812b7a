"""Human part segmentation (PASCAL-Context): CE loss and pooled-IoU mIoU.

Loss: prismformore/Multi-Task-Transformer (commit 870c6be1)
InvPT/losses/loss_functions.py CrossEntropyLoss(ignore_index=255).
Metric: InvPT/evaluation/eval_human_parts.py HumanPartsMeter and
SimonVandenhende/Multi-Task-Learning-PyTorch (commit ed3d9ac1)
evaluation/eval_human_parts.py (HumanPartsMeter, eval_human_parts): tp/fp/fn
pooled over non-ignored pixels, mean IoU over all 7 classes (bg + 6 parts).

Images without a person must contribute nothing (methods.md d.1). The input
pipeline does that by calling `ignore_images_without_person` (InvPT's rule,
or MTL-PyTorch's with rule="mtl"), so the metric itself only skips 255 and
padded examples. The two protocols differ only through that rule.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from mtdense_jax.tasks import base
from mtdense_jax.tasks import common


def ignore_images_without_person(label: np.ndarray,
                                 rule: str = "invpt") -> np.ndarray:
  """One image's part label -> all 255 if it shows no person.

  Reference: AddIgnoreRegions in InvPT/data/transforms.py (rule "invpt": all
  values in {0, 255}, which also catches padded person-free images) and in
  Multi-Task-Learning-PyTorch data/custom_transforms.py (rule "mtl": all 0).

  Args:
    label: (H, W) or (H, W, 1) integer part ids of ONE image (not a batch).
    rule: "invpt" or "mtl".

  Returns:
    The label unchanged, or an all-255 array of the same shape and dtype.
  """
  label = np.asarray(label)
  if rule == "invpt":
    no_person = bool(np.all((label == 0) | (label == base.IGNORE)))
  elif rule == "mtl":
    no_person = bool(np.all(label == 0))
  else:
    raise ValueError(f"Unknown rule {rule!r}; expected 'invpt' or 'mtl'.")
  if no_person:
    return np.full_like(label, base.IGNORE)
  return label


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task(common.ClassificationTask):
  """Per-pixel part classes (7 on PASCAL-Context), 255 = ignore."""

  name: ClassVar[str] = "human_parts"

  def ignore_regions(self, label: np.ndarray) -> np.ndarray:
    """A person-less image (after padding) becomes all ignore (InvPT)."""
    return ignore_images_without_person(label, "invpt")
