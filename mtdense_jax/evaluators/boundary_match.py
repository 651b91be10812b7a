"""Fast, exact pieces of edgesEvalImg: thinning and the BSDS matcher.

Why these are exact (tests/test_boundary_fast.py checks each against the
plain full-image path, ``reference_counts``):

* ``thin``: skimage's ``thin`` (bwmorph 'thin', Guo-Hall) computes every
  pixel's 3x3 code with a zero border and deletes by lookup table; only
  foreground pixels can change, so evaluating the codes at the foreground
  pixels alone (a sparse set after NMS) gives the same map.
* ``bsds_counts``: correspondPixels (BSDS ``matchEdgeMaps``) numbers the
  matchable pixels column-major and lists candidate pairs in the same
  order; both are unchanged when the two maps are cut to a window holding
  every foreground pixel, and so is the random outlier graph (its draws
  depend only on the node counts), provided the window is given the same
  pixel tolerance and the same integer outlier cost (``_window_fraction``).
  The assignment solver (CSA) then receives an identical problem.

correspondPixels draws its sparse outlier graph from one process-wide
random stream seeded from the clock; ``seed_matcher`` resets that stream
(through the symbols pyEdgeEval's extension exports) so results become
reproducible. Resetting before every call makes each call a pure function
of its maps, whatever the order, process or threshold chunking.
"""

from __future__ import annotations

import ctypes
import functools
import math
import sys

import numba
import numpy as np
from pyEdgeEval._lib import correspond_pixels
from scipy import sparse
from scipy.sparse import csgraph
from skimage.morphology import _skeletonize

# skimage's two Guo-Hall sub-iteration tables (private; thin() uses them,
# and test_thin_matches_skimage guards against a change).
_LUTS = (np.asarray(_skeletonize.G123_LUT, np.bool_),
         np.asarray(_skeletonize.G123P_LUT, np.bool_))
_OUTLIER_COST = 100.0  # correspond_pixels' default, as SEISM uses it


# ----------------------------------------------------------------- seeding

@functools.cache
def _random_init():
  """(Random::_init, &Random::rand) of pyEdgeEval's extension, or None."""
  module = sys.modules[correspond_pixels.__module__]
  try:
    lib = ctypes.CDLL(module.__file__)
    init = lib._ZN6Random5_initEm  # Random::_init(uint64): sets the state
    state = ctypes.c_void_p.in_dll(lib, "_ZN6Random4randE")  # Random::rand
  except (AttributeError, OSError, ValueError):
    return None
  init.argtypes, init.restype = [ctypes.c_void_p, ctypes.c_uint64], None
  return init, ctypes.addressof(state)


def seed_matcher(seed: int | None) -> None:
  """Resets correspondPixels' random stream (None: leave it alone)."""
  if seed is None:
    return
  fns = _random_init()
  if fns is None:
    raise RuntimeError(
        "this pyEdgeEval build does not export Random::_init, so "
        "correspondPixels cannot be seeded: pass seed=None (clock-seeded, "
        "not reproducible) or reinstall pyEdgeEval==0.2.8 from its sdist")
  init, addr = fns
  init(addr, int(seed) & 0xFFFFFFFFFFFF)


# ---------------------------------------------------------------- thinning

@numba.njit(cache=True)
def _gather_live(flat, gone_a, na, gone_b, nb, offsets, stamp, out):
  """Distinct live 8-neighbours of gone_a[:na] and gone_b[:nb] into out;
  stamp: all-zero scratch, left all zero."""
  n = 0
  for which in range(2):
    gone, ng = (gone_a, na) if which == 0 else (gone_b, nb)
    for i in range(ng):
      for o in offsets:
        q = gone[i] + o
        if flat[q] == 1 and stamp[q] == 0:
          stamp[q] = 1
          out[n] = q
          n += 1
  for i in range(n):
    stamp[out[i]] = 0
  return n


@numba.njit(cache=True)
def _thin_flat(flat, idx, stride, lut0, lut1, stamp):
  """Thins the pixels `idx` of a zero-bordered flat uint8 map in place;
  returns the survivors (in idx's order). stamp: all-zero int8 scratch of
  flat's size, left all zero.

  skimage's parallel sub-iterations (every code computed before any
  deletion), computed incrementally: a pixel whose 3x3 code has not
  changed since a sub-iteration's table last kept it is kept again, so
  after the first iteration only the live neighbours of the pixels deleted
  in the last two sub-iterations (every pixel whose code changed since
  that table's previous pass) are re-examined. Same deletions, same
  result.
  """
  offsets = np.array([-stride - 1, -stride, -stride + 1, -1, 1,
                      stride - 1, stride, stride + 1])
  # skimage's weights [[8, 4, 2], [16, 0, 1], [32, 64, 128]].
  weights = np.array([8, 4, 2, 16, 1, 32, 64, 128])
  n = idx.size
  cand = idx.copy()
  n_cand = n
  gone_prev = np.empty(n, np.int64)
  gone_cur = np.empty(n, np.int64)
  n_prev = n_older = 0
  first = True
  while True:
    deleted = 0
    for sub in range(2):
      lut = lut0 if sub == 0 else lut1
      n_cur = 0
      for i in range(n_cand):
        c = cand[i]
        if flat[c] != 1:
          continue
        code = 0
        for a in range(8):
          if flat[c + offsets[a]]:
            code += weights[a]
        if lut[code]:
          gone_cur[n_cur] = c
          n_cur += 1
      for i in range(n_cur):  # delete together: parallel sub-iteration
        flat[gone_cur[i]] = 0
      deleted += n_cur
      if not first:
        n_cand = _gather_live(flat, gone_prev, n_prev, gone_cur, n_cur,
                              offsets, stamp, cand)
      gone_prev, gone_cur = gone_cur, gone_prev
      n_older, n_prev = n_prev, n_cur
    if deleted == 0:
      break
    if first:  # from now on, only around deletions (both sub-iterations)
      first = False
      n_cand = _gather_live(flat, gone_cur, n_older, gone_prev, n_prev,
                            offsets, stamp, cand)
  keep = 0
  out = np.empty(n, np.int64)
  for i in range(n):
    if flat[idx[i]] == 1:
      out[keep] = idx[i]
      keep += 1
  return out[:keep]


def thin(binary: np.ndarray) -> np.ndarray:
  """skimage.morphology.thin on the foreground pixels only (same result)."""
  binary = np.asarray(binary, bool)
  h, w = binary.shape
  padded = np.zeros((h + 2, w + 2), np.uint8)  # zero border = mode constant
  padded[1:-1, 1:-1] = binary
  flat = padded.reshape(-1)
  _thin_flat(flat, np.flatnonzero(flat), w + 2, *_LUTS,
             np.zeros(flat.size, np.int8))
  return padded[1:-1, 1:-1].astype(bool)


class Sweep:
  """One image's (NMS) map as nested pixel sets, one per threshold.

  Pixels are sorted by value once; the set ``>= cut`` is a prefix of that
  order, so no threshold touches the whole image.
  """

  def __init__(self, e: np.ndarray):
    self.shape = e.shape
    h, w = e.shape
    flat = e.reshape(-1)
    nz = np.flatnonzero(flat > 0)  # every cut is >= eps > 0
    order = np.argsort(-flat[nz], kind="stable")
    self._asc = flat[nz][order][::-1].copy()
    pix = nz[order]
    self._padded = pix + 2 * (pix // w) + w + 3  # in the (h+2, w+2) frame
    self._buf = np.zeros((h + 2) * (w + 2), np.uint8)
    self._stamp = np.zeros(self._buf.size, np.int8)

  def size(self, cut: np.ndarray) -> np.ndarray:
    """How many pixels are >= each cut (same dtype as the map)."""
    return self._asc.size - np.searchsorted(self._asc, cut, side="left")

  def pixels(self, n: int, thin_them: bool = True
             ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the n strongest pixels (thinned if asked), row-major."""
    idx = self._padded[:n]
    if thin_them:
      self._buf[idx] = 1
      idx = _thin_flat(self._buf, idx, self.shape[1] + 2, *_LUTS,
                       self._stamp)
      self._buf[self._padded[:n]] = 0
    # Row-major order, as np.nonzero gives: the matchers' gathers and
    # Hopcroft-Karp are several times faster on it than in value order.
    rows, cols = np.divmod(np.sort(idx), self.shape[1] + 2)
    return rows - 1, cols - 1


# ----------------------------------------------------------------- matching

def _counts(pred: np.ndarray, gt: np.ndarray, m_pred, m_gt) -> np.ndarray:
  return np.array([np.count_nonzero(m_gt), np.count_nonzero(gt),
                   np.count_nonzero(m_pred), np.count_nonzero(pred)],
                  np.float64)


def reference_counts(pred: np.ndarray, gt: np.ndarray, max_dist: float,
                     seed: int | None = None) -> np.ndarray:
  """[cntR, sumR, cntP, sumP]: correspondPixels on the full maps (slow).

  The original implementation, kept as the reference the fast path is
  tested against.
  """
  if not pred.any() or not gt.any():
    return np.array([0, np.count_nonzero(gt), 0, np.count_nonzero(pred)],
                    np.float64)
  seed_matcher(seed)
  m_pred, m_gt, _, _ = correspond_pixels(pred, gt, max_dist=max_dist)
  return _counts(pred, gt, m_pred, m_gt)


@functools.lru_cache(maxsize=4096)
def _window_fraction(max_dist: float, shape: tuple[int, int],
                     window: tuple[int, int]) -> float | None:
  """A tolerance fraction for `window` with which correspondPixels builds
  the same problem as with `max_dist` on the full `shape`.

  correspond_pixels computes ``maxDist = f * hypot(window)`` (kept to the
  last bit here) and ``oc = 100 * f * hypot(window)``, of which CSA only
  sees ``ceil(100 * oc)`` (kept equal; 0.0075 on 375x500 sits exactly on
  an integer there). None when no nearby float works.
  """
  big = math.sqrt(shape[0] ** 2 + shape[1] ** 2)
  small = math.sqrt(window[0] ** 2 + window[1] ** 2)
  want_d = max_dist * big
  want_ow = math.ceil(_OUTLIER_COST * max_dist * big * 100)
  lo = hi = want_d / small
  for _ in range(8):  # outward, a few ulps either way
    for f in (lo, hi):
      if (f * small == want_d and
          math.ceil(_OUTLIER_COST * f * small * 100) == want_ow):
        return f
    lo, hi = float(np.nextafter(lo, 0.0)), float(np.nextafter(hi, 1.0))
  return None


def _window(box, shape, max_dist):
  """(top, bottom, left, right, fraction): a window holding `box` with a
  usable fraction, grown by up to 3 rows / columns if need be; else the
  full map."""
  t, b, l, r = box
  h, w = shape
  for grow in range(16):
    dh, dw = grow // 4, grow % 4
    if b - t + dh > h or r - l + dw > w:
      continue
    tt = max(0, min(t, h - (b - t + dh)))
    ll = max(0, min(l, w - (r - l + dw)))
    hh, ww = b - t + dh, r - l + dw
    if (hh, ww) == (h, w):
      break
    f = _window_fraction(float(max_dist), (h, w), (hh, ww))
    if f is not None:
      return tt, tt + hh, ll, ll + ww, f
  return 0, h, 0, w, max_dist


def foreground_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
  """(top, bottom, left, right) of a map's foreground; None if empty."""
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  if rows.size == 0:
    return None
  return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def bsds_counts(pred: np.ndarray, gt: np.ndarray, max_dist: float,
                seed: int | None = None,
                gt_box: tuple[int, int, int, int] | None = None
                ) -> np.ndarray:
  """``reference_counts``, with the maps cut to their joint bounding box.

  Args:
    pred, gt: (H, W) bool maps.
    max_dist: tolerance as a fraction of the FULL map's diagonal.
    seed: reset correspondPixels' random stream first (None: don't).
    gt_box: the gt's (top, bottom, left, right), if already known.
  """
  p_box = foreground_box(pred)
  g_box = gt_box if gt_box is not None else foreground_box(gt)
  if p_box is None or g_box is None:  # nothing to match: no call, no draws
    return np.array([0, np.count_nonzero(gt), 0, np.count_nonzero(pred)],
                    np.float64)
  box = (min(p_box[0], g_box[0]), max(p_box[1], g_box[1]),
         min(p_box[2], g_box[2]), max(p_box[3], g_box[3]))
  t, b, l, r, frac = _window(box, pred.shape, max_dist)
  p, g = pred[t:b, l:r], gt[t:b, l:r]
  seed_matcher(seed)
  m_pred, m_gt, _, _ = correspond_pixels(p, g, max_dist=frac)
  return _counts(p, g, m_pred, m_gt)


class MaxCardinality:
  """Fast stand-in: a maximum matching of the same candidate pairs.

  BSDS's matcher minimises cost with a large per-outlier penalty, i.e. it
  maximises the number of pairs within maxDist, but its random sparse
  outlier graph sometimes leaves a few matchable pixels out. Hopcroft-Karp
  (scipy) finds the true maximum, so its counts are an upper bound on
  correspondPixels' (tests/test_boundary.py); NOT the reference.

  Built once per image (gt pixel ids, the pixels within reach of the gt,
  the integer offsets within maxDist) and called per threshold. A pixel's
  candidate gt pixels come from one gather over those offsets the first
  time it is predicted and are cached: consecutive thresholds share most
  pixels.
  """

  def __init__(self, gt: np.ndarray, max_dist: float):
    gt = np.asarray(gt, bool)
    self.shape = gt.shape
    d = float(max_dist) * math.sqrt(gt.shape[0] ** 2 + gt.shape[1] ** 2)
    r = int(math.ceil(d))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    keep = dy ** 2 + dx ** 2 <= d * d  # matchEdgeMaps: d2 > maxDist^2 out
    self._pad = r
    wp = gt.shape[1] + 2 * r
    self._offsets = (dy[keep] * wp + dx[keep]).astype(np.intp)
    ids = np.full((gt.shape[0] + 2 * r, wp), -1, np.int32)
    self.sum_r = int(np.count_nonzero(gt))
    ids[r:r + gt.shape[0], r:r + gt.shape[1]][gt] = np.arange(self.sum_r)
    self._ids = ids.reshape(-1)
    near = np.zeros(ids.shape, bool)
    for oy, ox in zip(dy[keep], dx[keep]):  # dilate by the disc
      near[r + oy:r + oy + gt.shape[0], r + ox:r + ox + gt.shape[1]] |= gt
    self._near = near[r:r + gt.shape[0], r:r + gt.shape[1]]
    # Cache: image-flat pixel -> row of (indptr, indices), -1 if not yet.
    self._row = np.full(gt.size, -1, np.int64)
    self._indptr = np.zeros(1, np.int64)
    self._indices = np.zeros(0, np.int32)

  def _rows(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Cache rows of pixels (ys, xs), gathering the new ones' pairs."""
    flat = ys * self.shape[1] + xs
    rows = self._row[flat]
    new = rows < 0
    if new.any():
      wp = self.shape[1] + 2 * self._pad
      padded = (ys[new] + self._pad) * wp + xs[new] + self._pad
      cand = self._ids[padded[:, None] + self._offsets[None, :]]
      hit = cand >= 0
      start = self._indptr.size - 1
      self._row[flat[new]] = np.arange(start, start + padded.size)
      self._indptr = np.concatenate(
          [self._indptr, self._indptr[-1] + np.cumsum(hit.sum(1))])
      self._indices = np.concatenate([self._indices, cand[hit]])
      rows = self._row[flat]
    return rows

  def __call__(self, pred: np.ndarray, seed: int | None = None
               ) -> np.ndarray:
    return self.pixels(*np.nonzero(pred), seed)

  def pixels(self, ys: np.ndarray, xs: np.ndarray,
             seed: int | None = None) -> np.ndarray:
    """Counts for the predicted pixels (ys, xs)."""
    del seed  # deterministic
    sum_p = int(ys.size)
    if sum_p == 0 or self.sum_r == 0:
      return np.array([0, self.sum_r, 0, sum_p], np.float64)
    keep = self._near[ys, xs]
    ys, xs = ys[keep], xs[keep]
    if ys.size == 0:
      return np.array([0, self.sum_r, 0, sum_p], np.float64)
    rows = self._rows(ys, xs)
    begin, lengths = self._indptr[rows], np.diff(self._indptr)[rows]
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    at = np.arange(indptr[-1]) + np.repeat(begin - indptr[:-1], lengths)
    graph = sparse.csr_matrix(
        (np.ones(at.size, np.int8), self._indices[at], indptr),
        shape=(rows.size, self.sum_r))
    n = int(np.count_nonzero(
        csgraph.maximum_bipartite_matching(graph, perm_type="column") >= 0))
    return np.array([n, self.sum_r, n, sum_p], np.float64)


class Bsds:
  """``bsds_counts`` against one gt (its box found once)."""

  def __init__(self, gt: np.ndarray, max_dist: float):
    self.gt, self.max_dist = gt, max_dist
    self.sum_r = int(np.count_nonzero(gt))
    self._box = foreground_box(gt)

  def __call__(self, pred: np.ndarray, seed: int | None = None
               ) -> np.ndarray:
    return bsds_counts(pred, self.gt, self.max_dist, seed, gt_box=self._box)

  def pixels(self, ys: np.ndarray, xs: np.ndarray,
             seed: int | None = None) -> np.ndarray:
    pred = np.zeros(self.gt.shape, bool)
    pred[ys, xs] = True
    return self(pred, seed)


def max_cardinality_counts(pred: np.ndarray, gt: np.ndarray,
                           max_dist: float, seed: int | None = None
                           ) -> np.ndarray:
  """One-off ``MaxCardinality`` (see there)."""
  return MaxCardinality(gt, max_dist)(pred, seed)
