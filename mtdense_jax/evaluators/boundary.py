"""Boundary odsF / oisF / AP without MATLAB: SEISM as InvPT and ATRC run it.

Port (facts only, no code copied) of the offline protocol of
prismformore/Boundary-Detection-Evaluation-Tools@bf19442 (a SEISM wrapper)
and jponttuset/seism (files cited per step), ../shared/notes/methods.md d.6:

1. Prediction: InvPT writes ``(255 * sigmoid).astype(uint8)`` PNGs (a
   truncation) at the original size (centred padding cropped), and
   ``read_one_cont_png`` (seism@35e6f16) reads them with ``im2single``.
   ``quantize=True`` reproduces that round trip.
2. Edge NMS (``read_one_cont_png``): ``[Ox,Oy] = gradient2(convTri(E,4))``,
   ``O = mod(atan(Oyy.*sign(-Oxy)./(Oxx+1e-5)), pi)``,
   ``edgesNmsMex(E, O, r=1, s=5, m=1.01)``. No extra ``convTri(E,1)`` (that is
   HED's/pyEdgeEval's ``fast_nms``, which we therefore do not call). convTri,
   gradient2 and the compiled NMS come from pyEdgeEval; the orientation is
   computed in float32 (MATLAB single), the NMS in float64, its output
   rounded to single as edgesNmsMex returns it.
3. Binarise ``E >= max(eps, thr)`` (compared in single; an assumption about
   MATLAB's single-vs-double comparison that only matters at exact ties)
   for each threshold of ``parameters/HED.txt``
   (0.001, 0.01 ... 0.99, 0.999: 101 values, per the notes; the file itself
   was not readable here).
4. ``edgesEvalImg`` (seism src/piotr_edges): thin the binary prediction
   (``bwmorph(.,'thin',inf)`` = ``skimage.morphology.thin``), gt boundary =
   ``seg2bmap(gt)`` (NOT thinned), ``correspondPixels(E1, G, maxDist)``
   (pyEdgeEval's compiled BSDS matcher, outlier cost 100); per threshold
   cntR = matched gt pixels, sumR = gt pixels, cntP = matched predicted
   pixels, sumP = predicted pixels. maxDist is a fraction of the diagonal:
   0.0075 PASCAL-Context, 0.011 NYUD (seism ``eval_method.m`` of the wrapper).
5. ``gather_measure`` / ``general_ods`` / ``general_ois`` / ``general_ap``
   (seism src/scripts): counts summed over images, odsF = max over thresholds
   of the dataset F (no interpolation, unlike BSDS/pyEdgeEval), oisF from each
   image's first best threshold, AP = mean of the linearly interpolated P(R)
   at R = 0, .01, ..., 1 (points outside the curve dropped, sum / 100).

Ground truth (the wrapper's ``db_gt.m``): PASCAL-Context passes the 459-class
``LabelMap`` (a segmentation) through ``seg2bmap``; NYUD reads
``edge/<id>.png`` and ALSO passes it through ``seg2bmap`` as if it were a
segmentation, which turns each 1-pixel edge line into a 2-pixel band.
``gt_mode``: "segmentation" (seg2bmap, SEISM as coded), "boundary" (the
binary map is the boundary map, BSDS/pyEdgeEval style) or "auto" (a {0,1}
map is a boundary map, anything else a segmentation). LabelMap mode needs
the label map itself: the PASCAL builder stores it as ``labelmap`` (uint16,
459 classes) with the edge task; config ``eval.boundary.gt_key="labelmap"``
and ``gt_mode="segmentation"`` score against seg2bmap of it, once the eval
batches carry that key. seg2bmap(LabelMap) cannot be rebuilt from the
stored PASCAL edge target thin(|Laplacian(LabelMap)| > 0) (other pixels,
thinned) nor from the 21-class semseg map (a coarser partition). Without
it the PASCAL score is against that edge target, not SEISM's gt.

With 1-pixel gt lines that NYUD reading caps recall near 1/2 (a perfect
1-pixel prediction scores F ~ 0.62), hard to square with published NYUD odsF
~ 0.77; which edge PNGs SEISM's NYUD root held is unknown here, so "auto"
keeps a {0, 1} map as the boundary map and "segmentation" is opt-in.

Reproduced exactly: steps 1, 3 (given the list), 5, seg2bmap (BSDS
``seg2bmap.m`` at the native size: E, S, SE neighbours, last row E only,
last column S only, corner 0), and the BSDS matcher's counts (its own
problem and random graph; see below). Unknowable without MATLAB: the
clock-seeded outlier graph of SEISM's correspondPixels (not even SEISM
reruns agree: on ambiguous maps 0-0.5 % of matchable pixels go unmatched,
differently per run); float32 rounding of MATLAB's convTri / gradient2 /
atan vs numpy's, and single-vs-double ties at a threshold; whether
bwmorph 'thin' equals skimage's Guo-Hall ``thin`` bit for bit; the exact
HED.txt list and SEISM's NYUD edge PNGs.

Speed and exactness. The default path sorts the NMS pixels once (each
threshold's set is a prefix), thins only foreground pixels
(``boundary_match``), stops at the first empty threshold, and gets
correspondPixels' counts from ``boundary_assign``: the same assignment
problem (its random outlier graph replayed bit for bit from ``seed``),
solved exactly by a faster method than the compiled CSA. ``seed`` is the
random stream's state at every call, so counts are reproducible and a pure
function of the maps; they equal, count for count, those of
correspondPixels itself (``matcher="bsds_csa"``) and of the original
full-image path (``slow_reference=True``) on every comparison made
(tests/test_boundary_fast.py; benchmarks/boundary_eval.py ``--csa``).
Per synthetic image (101 thresholds, ~85 distinct solves of up to ~6,000
matchable pixels) the whole path takes ~0.5 CPU s at PASCAL size (NMS
0.04, thinning 0.08, matcher 0.4) and ~0.85 at NYUD size, against ~17
and ~22 with CSA (benchmarks/boundary_eval.py prints the current figures,
per stage and per matcher stage: no single one dominates; the serial
replay of the random outlier draws alone is ~0.09 s). PASCAL-Context val
(5,105 images) thus takes ~20-25 min on 2 cores (``max_cardinality``
~10); ``BoundaryEvaluator``'s default (processes=-1) spreads the images
over one process per core.
``matcher="max_cardinality"`` (Hopcroft-Karp on the same candidate pairs;
deterministic, an upper bound, not the protocol) moves odsF by +0.0002 on
those scenes and +0.0009 on 100 synthetic-scenes val images
(``--val 100``); off by default.

Empty cases (SEISM ``eval_cont``): no gt boundary -> R = 1, P = 0; nothing
predicted -> R = 0, P = 1; F = 0 when P + R = 0. Dataset level follows
``gather_measure``'s vectorised rules (see ``_dataset_pr``).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Sequence

import numpy as np
from pyEdgeEval._lib import nms as _nms
from pyEdgeEval.preprocess.nms.toolbox import conv_tri
from pyEdgeEval.preprocess.nms.toolbox import grad2
from skimage.morphology import thin as _skimage_thin

from mtdense_jax.evaluators import boundary_assign
from mtdense_jax.evaluators import boundary_match as match_lib

MAX_DIST_PASCAL = 0.0075
MAX_DIST_NYUD = 0.011
# SEISM parameters/HED.txt (methods.md d.6): 101 thresholds.
SEISM_THRESHOLDS = np.concatenate(
    [[0.001], np.arange(1, 100) / 100.0, [0.999]])
_EPS = np.finfo(np.float64).eps  # MATLAB eps
# correspondPixels' random stream is reset to this before every call.
DEFAULT_SEED = 1

Crop = tuple[int, int] | tuple[int, int, int, int]


def resolve_thresholds(thresholds: int | Sequence[float] | None) -> np.ndarray:
  """None -> SEISM's 101; int K -> edgesEvalImg's linspace; else as given."""
  if thresholds is None:
    return SEISM_THRESHOLDS.copy()
  if isinstance(thresholds, (int, np.integer)):
    k = int(thresholds)
    return np.linspace(1.0 / (k + 1), 1.0 - 1.0 / (k + 1), k)
  out = np.asarray(thresholds, np.float64).reshape(-1)
  if out.size == 0 or np.any(np.diff(out) <= 0):
    raise ValueError("thresholds must be non-empty and strictly increasing")
  return out


def quantize_uint8(prob: np.ndarray) -> np.ndarray:
  """InvPT's PNG round trip: (255 * p).astype(uint8), read back / 255."""
  p = np.clip(np.asarray(prob, np.float32), 0.0, 1.0)
  q = (np.float32(255.0) * p).astype(np.uint8)  # truncation, as astype does
  return q.astype(np.float32) / np.float32(255.0)


def edge_nms(edge: np.ndarray) -> np.ndarray:
  """SEISM read_one_cont_png's NMS (orientation in float32, as single)."""
  e = np.asarray(edge, np.float32)
  ox, oy = grad2(conv_tri(e, 4))
  oxx, _ = grad2(ox)
  oxy, oyy = grad2(oy)
  ori = np.mod(np.arctan(oyy * np.sign(-oxy) / (oxx + np.float32(1e-5))),
               np.float32(np.pi))
  return _nms(e, ori, r=1, s=5, m=1.01)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
  """BSDS seg2bmap at full size: label differs from E, S or SE neighbour."""
  seg = np.asarray(seg)
  b = np.zeros(seg.shape, bool)
  b[:-1, :-1] = ((seg[:-1, :-1] != seg[:-1, 1:])
                 | (seg[:-1, :-1] != seg[1:, :-1])
                 | (seg[:-1, :-1] != seg[1:, 1:]))
  b[-1, :-1] = seg[-1, :-1] != seg[-1, 1:]   # last row: east only
  b[:-1, -1] = seg[:-1, -1] != seg[1:, -1]   # last column: south only
  b[-1, -1] = False
  return b


def gt_boundaries(gt: np.ndarray, gt_mode: str = "auto") -> np.ndarray:
  """Boundary map (bool) of a gt edge map or segmentation (see module doc)."""
  gt = np.asarray(gt)
  values = np.unique(gt)
  binary = bool(np.all(np.isin(values, (0, 1))))
  if gt_mode == "auto":
    if not binary and np.all(np.isin(values, (0, 1, 255))):
      raise ValueError("gt edge map holds 255 (padding/ignore): pass crop, "
                       "or gt_mode='segmentation' if 255 is a real label")
    gt_mode = "boundary" if binary else "segmentation"
  if gt_mode == "boundary":
    if not binary:
      raise ValueError(f"boundary gt must be in {{0, 1}}, got {values[:8]}")
    return gt.astype(bool)
  if gt_mode == "segmentation":
    return seg2bmap(gt)
  raise ValueError(f"gt_mode must be auto|boundary|segmentation: {gt_mode!r}")


def apply_crop(arr: np.ndarray, crop: Crop | None) -> np.ndarray:
  """(h, w): InvPT's centred crop ((H-h)//2 offsets); or (top, left, h, w)."""
  arr = np.asarray(arr)
  if arr.ndim == 3 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  if arr.ndim != 2:
    raise ValueError(f"expected an (H, W) map, got shape {arr.shape}")
  if crop is None:
    return arr
  if len(crop) == 2:
    h, w = crop
    top, left = (arr.shape[0] - h) // 2, (arr.shape[1] - w) // 2
  else:
    top, left, h, w = crop
  if top < 0 or left < 0 or top + h > arr.shape[0] or left + w > arr.shape[1]:
    raise ValueError(f"crop {crop} outside a map of shape {arr.shape}")
  return arr[top:top + h, left:left + w]


# name -> (gt, max_dist) -> a per-image matcher (``.pixels(ys, xs, seed)``).
# "bsds" and "bsds_csa" give the same counts (boundary_assign's doc).
MATCHERS = {"bsds": boundary_assign.Assign,
             "bsds_csa": match_lib.Bsds,
             "max_cardinality": match_lib.MaxCardinality}


class StageTimes(dict):
  """CPU seconds per stage of ``image_counts`` (pass one in to collect
  them; process time, so a loaded machine does not inflate them)."""

  def add(self, stage: str, t0: float) -> float:
    now = time.process_time()
    self[stage] = self.get(stage, 0.0) + now - t0
    return now


def _tick(profile: StageTimes | None, stage: str, t0: float) -> float:
  return profile.add(stage, t0) if profile is not None else t0


def image_counts(prob: np.ndarray, gt: np.ndarray, max_dist: float,
                 thresholds: int | Sequence[float] | None = None,
                 nms: bool = True, *, gt_mode: str = "auto",
                 quantize: bool = True, crop: Crop | None = None,
                 thin: bool = True, matcher: str = "bsds",
                 seed: int | None = DEFAULT_SEED,
                 indices: Sequence[int] | None = None,
                 slow_reference: bool = False,
                 profile: StageTimes | None = None) -> np.ndarray:
  """Per-threshold (T, 4) counts [cntR, sumR, cntP, sumP] of one image.

  Pure (picklable arguments), so it can run in a multiprocessing pool.

  Args:
    prob: (H, W) edge probability in [0, 1] (sigmoid of the logits).
    gt: (H, W) binary edge map or segmentation (see ``gt_mode``).
    max_dist: match tolerance as a fraction of the image diagonal.
    thresholds: None (SEISM's 101), an int K, or increasing values.
    nms: apply SEISM's edge NMS before thresholding.
    gt_mode: "auto" | "boundary" | "segmentation" (module doc).
    quantize: reproduce InvPT's uint8 PNG truncation first.
    crop: applied to both maps first (drop the eval padding).
    thin: bwmorph-thin each binary prediction (edgesEvalImg default).
    matcher: "bsds" (correspondPixels' assignment problem, solved by
      boundary_assign), "bsds_csa" (the same counts from correspondPixels
      itself, ~10x slower) or "max_cardinality" (scipy Hopcroft-Karp; not
      the reference, see boundary_match).
    seed: correspondPixels' random stream is reset to it before every
      call (None: clock-seeded as in SEISM, not reproducible).
    indices: only these threshold indices (rows of the result, in order);
      lets a pool split one image's thresholds.
    slow_reference: the original full-image path (skimage thin,
      correspondPixels on the whole map; ignores ``matcher``); the same
      counts as matcher="bsds", kept for tests.
    profile: a StageTimes to add this call's seconds per stage to.
  """
  t0 = time.process_time()
  thr = resolve_thresholds(thresholds)
  if indices is not None:
    thr = thr[np.asarray(indices, int)]
  match = MATCHERS[matcher]  # KeyError names the matcher
  e = apply_crop(prob, crop).astype(np.float32)
  g = gt_boundaries(apply_crop(gt, crop), gt_mode)
  if e.shape != g.shape:
    raise ValueError(f"prob {e.shape} and gt {g.shape} differ in shape")
  if quantize:
    e = quantize_uint8(e)
  t0 = _tick(profile, "prepare", t0)
  if nms:
    e = edge_nms(e).astype(np.float32)  # edgesNmsMex returns single
  t0 = _tick(profile, "nms", t0)
  # Binarise: pixels >= t, compared in single.
  cut = np.float32(np.maximum(_EPS, thr))
  if slow_reference:
    return _reference_sweep(e, g, cut, max_dist, thin, seed, profile, t0)
  out = np.zeros((thr.size, 4), np.float64)
  sweep, match = match_lib.Sweep(e), match(g, max_dist)
  sizes = sweep.size(cut)
  t0 = _tick(profile, "binarise", t0)
  prev_n = -1
  for k, n in enumerate(sizes):
    if n == prev_n:  # nested sets: same size, same map, same counts
      out[k] = out[k - 1]
      continue
    if n == 0:  # empty from here on (sizes only shrink)
      out[k:] = (0, match.sum_r, 0, 0)
      break
    ys, xs = sweep.pixels(int(n), thin)
    t0 = _tick(profile, "thin", t0)
    out[k] = match.pixels(ys, xs, seed)
    t0 = _tick(profile, "match", t0)
    prev_n = n
  return out


def _reference_sweep(e, g, cut, max_dist, thin, seed, profile, t0
                     ) -> np.ndarray:
  """The original loop: full-image maps, skimage thin, correspondPixels."""
  out = np.zeros((cut.size, 4), np.float64)
  prev_n, prev_row = -1, None
  for k, t in enumerate(cut):
    b = e >= t
    n = int(np.count_nonzero(b))
    t0 = _tick(profile, "binarise", t0)
    if n == prev_n:  # nested sets: same size means the same map
      out[k] = prev_row
      continue
    if thin and n:
      b = _skimage_thin(b)
    t0 = _tick(profile, "thin", t0)
    out[k] = prev_row = match_lib.reference_counts(b, g, max_dist, seed)
    t0 = _tick(profile, "match", t0)
    prev_n = n
  return out


def _image_pr(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """eval_cont's per-image P, R (rows of c = [cntR, sumR, cntP, sumP])."""
  cnt_r, sum_r, cnt_p, sum_p = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
  with np.errstate(divide="ignore", invalid="ignore"):
    rec = np.where(sum_r == 0, 1.0,
                   np.where(sum_p == 0, 0.0, cnt_r / sum_r))
    prec = np.where(sum_r == 0, 0.0,
                    np.where(sum_p == 0, 1.0, cnt_p / sum_p))
  return prec, rec


def _dataset_pr(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """gather_measure's vectorised P, R of summed (T, 4) counts."""
  cnt_r, sum_r, cnt_p, sum_p = c[:, 0], c[:, 1], c[:, 2], c[:, 3]
  rec, prec = np.zeros(len(c)), np.zeros(len(c))
  no_gt = (sum_r == 0) & (cnt_p == 0)
  rec[no_gt], prec[no_gt] = 1.0, 0.0
  no_pred = (sum_p == 0) & (cnt_r == 0)  # applied second: wins when both
  rec[no_pred], prec[no_pred] = 0.0, 1.0
  ok = (sum_p != 0) & (cnt_r != 0)
  rec[ok], prec[ok] = cnt_r[ok] / sum_r[ok], cnt_p[ok] / sum_p[ok]
  return prec, rec


def _f(prec: np.ndarray, rec: np.ndarray) -> np.ndarray:
  s = prec + rec
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(s == 0, 0.0, 2.0 * prec * rec / np.where(s == 0, 1, s))


def seism_ap(prec: np.ndarray, rec: np.ndarray) -> float:
  """general_ap: interp1 of P over unique R at 0:.01:1, NaN dropped, / 100."""
  rec_u, first = np.unique(rec, return_index=True)  # MATLAB unique: first
  if rec_u.size <= 1:
    return 0.0
  grid = np.linspace(0.0, 1.0, 101)
  inside = (grid >= rec_u[0]) & (grid <= rec_u[-1])
  return float(np.interp(grid[inside], rec_u, prec[first]).sum() / 100.0)


def summarize(counts: np.ndarray) -> dict[str, float]:
  """odsF, oisF, AP (fractions) of per-image counts (N, T, 4), as SEISM."""
  counts = np.asarray(counts, np.float64)
  if counts.ndim != 3 or counts.shape[0] == 0 or counts.shape[-1] != 4:
    raise ValueError(f"need (N>0, T, 4) counts, got shape {counts.shape}")
  prec, rec = _dataset_pr(counts.sum(axis=0))
  f = _f(prec, rec)
  best = int(np.argmax(f))  # MATLAB max: first maximum
  img_f = _f(*_image_pr(counts))  # (N, T)
  pick = counts[np.arange(len(counts)), np.argmax(img_f, axis=1)].sum(0)
  ois_p, ois_r = _image_pr(pick)
  return {"odsF": float(f[best]),
          "oisF": float(_f(ois_p, ois_r)),
          "AP": seism_ap(prec, rec)}


# processes=-1: images evaluated inline before the pool starts.
AUTO_INLINE = 16


class BoundaryEvaluator:
  """Accumulates per-image SEISM counts; ``compute`` gives odsF/oisF/AP.

  ``processes > 0`` evaluates images in a spawn-context pool (safe beside
  JAX's threads; the launching script needs the usual ``__main__`` guard);
  ``processes=-1`` (auto) evaluates the first ``AUTO_INLINE`` images inline
  (a pool's start-up costs seconds, more than a small split) and the rest
  in a pool of one process per usable core (inline on one core):
  ``add`` returns at once unless ``4 * processes`` tasks are already in
  flight (then it waits for the oldest, so memory stays bounded);
  ``compute`` waits for all. ``chunks > 1`` splits each image's thresholds
  into that many interleaved tasks (keeps a pool busy on few images; the
  counts are the same, correspondPixels being reseeded per call). Or run
  ``image_counts`` in a pool of your own and feed ``add_counts``.
  """

  def __init__(self, max_dist: float,
               thresholds: int | Sequence[float] | None = None,
               nms: bool = True, *, gt_mode: str = "auto",
               quantize: bool = True, processes: int = 0,
               matcher: str = "bsds", seed: int | None = DEFAULT_SEED,
               chunks: int = 1):
    if matcher not in MATCHERS:
      raise ValueError(f"matcher must be one of {sorted(MATCHERS)}, got "
                       f"{matcher!r}")
    self.max_dist = float(max_dist)
    self.thresholds = resolve_thresholds(thresholds)
    self.nms, self.gt_mode, self.quantize = nms, gt_mode, quantize
    self.matcher, self.seed = matcher, seed
    self._chunks = max(1, min(int(chunks), self.thresholds.size))
    self._counts: list[np.ndarray] = []
    self._pending: list[list] = []  # per image: its chunks' AsyncResults
    if processes < 0:
      cores = len(os.sched_getaffinity(0)) if hasattr(
          os, "sched_getaffinity") else (os.cpu_count() or 1)
      processes = cores if cores > 1 else 0
      self._inline_first = AUTO_INLINE
    else:
      self._inline_first = 0
    self._processes = processes
    self._pool = None
    self.submitted = 0

  def _kwargs(self, crop, indices=None) -> dict:
    return dict(gt_mode=self.gt_mode, quantize=self.quantize, crop=crop,
                matcher=self.matcher, seed=self.seed, indices=indices)

  def add(self, prob: np.ndarray, gt: np.ndarray,
          crop: Crop | None = None) -> None:
    """Adds one image: prob (H, W) in [0, 1], gt (H, W) edges or labels."""
    args = (np.asarray(prob), np.asarray(gt), self.max_dist,
            self.thresholds, self.nms)
    self.submitted += 1
    if self._processes <= 0 or self.submitted <= self._inline_first:
      self.add_counts(image_counts(*args, **self._kwargs(crop)))
      return
    if self._pool is None:
      ctx = multiprocessing.get_context("spawn")
      self._pool = ctx.Pool(self._processes)
    while (len(self._pending) * self._chunks >= 4 * self._processes):
      self._collect(self._pending.pop(0))
    k, n = self._chunks, self.thresholds.size
    self._pending.append([
        (idx, self._pool.apply_async(image_counts, args,
                                     self._kwargs(crop, idx)))
        for idx in (np.arange(i, n, k) for i in range(k))])

  def _collect(self, chunks: list) -> None:
    out = np.zeros((self.thresholds.size, 4))
    for idx, res in chunks:
      out[idx] = res.get()
    self.add_counts(out)

  @property
  def done(self) -> int:
    """Images finished so far (without waiting)."""
    ready = sum(all(r.ready() for _, r in c) for c in self._pending)
    return len(self._counts) + ready

  def add_counts(self, counts: np.ndarray) -> None:
    """Adds counts computed elsewhere (``image_counts``, same thresholds)."""
    counts = np.asarray(counts, np.float64)
    if counts.shape != (self.thresholds.size, 4):
      raise ValueError(f"counts must be ({self.thresholds.size}, 4), got "
                       f"{counts.shape}")
    self._counts.append(counts)

  @property
  def counts(self) -> np.ndarray:
    """(N, T, 4) counts so far, in the order added (waits for the pool)."""
    for chunks in self._pending:
      self._collect(chunks)
    self._pending = []
    return np.stack(self._counts) if self._counts else np.zeros(
        (0, self.thresholds.size, 4))

  def compute(self) -> dict[str, float]:
    """{"odsF", "oisF", "AP"} as fractions."""
    return summarize(self.counts)

  def curve(self) -> dict[str, np.ndarray]:
    """Dataset precision / recall / F per threshold (gather_measure)."""
    prec, rec = _dataset_pr(self.counts.sum(axis=0))
    return {"thresholds": self.thresholds, "precision": prec, "recall": rec,
            "f": _f(prec, rec)}

  def close(self) -> None:
    """Waits for and shuts down the worker pool, if any."""
    if self._pool is not None:
      _ = self.counts
      self._pool.close()
      self._pool.join()
      self._pool = None
