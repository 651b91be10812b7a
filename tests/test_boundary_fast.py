"""The fast boundary path gives exactly the original path's counts.

``image_counts(..., slow_reference=True)`` is the original implementation
(skimage thin and correspondPixels on the whole map, once per threshold);
the default path thins sparsely, skips empty thresholds and gets the counts
from boundary_assign (correspondPixels' own assignment problem, its random
outlier graph replayed, solved without CSA); ``bsds_counts`` is
correspondPixels on the maps' joint bounding box. With the random stream
reset before every call, all must agree to the pixel: cntR, sumR, cntP and
sumP.
"""

from __future__ import annotations

import ctypes
import math
import sys

import numpy as np
from pyEdgeEval._lib import correspond_pixels
import pytest
from scipy import ndimage
from scipy import sparse
from scipy import spatial
from scipy.sparse import csgraph
from skimage.morphology import thin as skimage_thin

from data_builders.synthetic_scenes import builder as scenes
from mtdense_jax.evaluators import boundary
from mtdense_jax.evaluators import boundary_assign
from mtdense_jax.evaluators import boundary_match as match_lib


def _voronoi(rng, h, w, regions=6):
  pts = rng.random((regions, 2)) * [h, w]
  yy, xx = np.mgrid[:h, :w]
  return np.argmin((yy[..., None] - pts[:, 0]) ** 2
                   + (xx[..., None] - pts[:, 1]) ** 2, -1)


def _prediction(rng, edges, clutter=0.25):
  """A network-like sigmoid map: blurred, shifted edges plus clutter."""
  moved = ndimage.shift(edges.astype(float), rng.integers(-2, 3, 2), order=0)
  prob = ndimage.gaussian_filter(moved, 1.2)
  noise = ndimage.gaussian_filter(rng.random(edges.shape), 2.0)
  noise = (noise - noise.min()) / max(np.ptp(noise), 1e-9)
  return np.clip(0.9 * prob / max(prob.max(), 1e-9) + clutter * noise, 0, 1)


def _both(prob, gt, max_dist, **kw):
  fast = boundary.image_counts(prob, gt, max_dist, **kw)
  slow = boundary.image_counts(prob, gt, max_dist, slow_reference=True, **kw)
  return fast, slow


def test_thin_matches_skimage():
  rng = np.random.default_rng(0)
  for density in (0.05, 0.3, 0.6, 0.9):
    b = rng.random((40, 57)) < density
    b[0, :] = b[:, -1] = True  # touching the border
    np.testing.assert_array_equal(match_lib.thin(b), skimage_thin(b))
  ring = np.hypot(*np.mgrid[-20:21, -20:21]) < 15  # thick blob -> skeleton
  np.testing.assert_array_equal(match_lib.thin(ring), skimage_thin(ring))
  for k in range(20):  # thick random shapes: many incremental iterations
    b = ndimage.binary_dilation(rng.random((30 + k, 45)) < 0.03,
                                iterations=1 + k % 4)
    np.testing.assert_array_equal(match_lib.thin(b), skimage_thin(b))
  assert not match_lib.thin(np.zeros((5, 5), bool)).any()


def test_sweep_pixels_equal_skimage_thin_of_each_prefix():
  # Sweep.pixels (numba thinning of the n strongest pixels, reusing its
  # buffers call after call) equals skimage's thin of the prefix map, in
  # any order of the calls.
  rng = np.random.default_rng(5)
  e = ndimage.gaussian_filter(rng.random((48, 64)), 1.0).astype(np.float32)
  e[rng.random(e.shape) < 0.3] = 0  # gaps: many components
  sweep = match_lib.Sweep(e)
  order = np.argsort(-e.reshape(-1), kind="stable")
  total = int(np.count_nonzero(e))
  for n in list(range(total, 0, -37)) + [total // 2, total, 5, 0, 40]:
    prefix = np.zeros(e.size, bool)
    prefix[order[:n]] = True
    want = np.nonzero(skimage_thin(prefix.reshape(e.shape)))
    got = sweep.pixels(n)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("shape,max_dist", [
    ((375, 500), boundary.MAX_DIST_PASCAL),
    ((448, 576), boundary.MAX_DIST_NYUD),
    ((96, 128), scenes.EDGE_MAX_DIST)])
def test_window_keeps_tolerance_and_outlier_cost(shape, max_dist):
  # What correspond_pixels derives from the fraction: maxDist to the bit
  # and CSA's integer outlier weight ceil(100 * 100 * f * diag).
  big = math.hypot(*shape)
  rng = np.random.default_rng(1)
  for _ in range(200):
    h, w = int(rng.integers(1, shape[0])), int(rng.integers(1, shape[1]))
    top, bottom, left, right, f = match_lib._window(
        (0, h, 0, w), shape, max_dist)
    assert bottom - top >= h and right - left >= w
    assert bottom <= shape[0] and right <= shape[1]
    small = math.sqrt((bottom - top) ** 2 + (right - left) ** 2)
    assert f * small == max_dist * big
    assert (math.ceil(100.0 * f * small * 100)
            == math.ceil(100.0 * max_dist * big * 100))


def _ambiguous_map():
  """(gt, prob): a Voronoi boundary map and a shifted, blurred, noisy
  prediction of it, where correspondPixels' random outlier graph decides
  some matches."""
  rng = np.random.default_rng(0)
  gt = boundary.seg2bmap(_voronoi(rng, 48, 64))
  moved = ndimage.shift(gt.astype(float), rng.integers(-1, 2, 2), order=0)
  prob = ndimage.gaussian_filter(moved, 1.0)
  return gt, np.clip(prob / prob.max() + 0.2 * rng.random(gt.shape), 0, 1)


def test_seed_makes_the_matcher_reproducible():
  # On this ambiguous map the random outlier graph matters: seed 1 leaves
  # one matchable pixel out where other seeds match all 154.
  gt, prob = _ambiguous_map()
  pred = match_lib.thin(prob > 0.3)
  got = []
  for seed in range(1, 9):
    runs = [match_lib.bsds_counts(pred, gt, 0.02, seed) for _ in range(3)]
    for r in runs[1:]:
      np.testing.assert_array_equal(r, runs[0])
    np.testing.assert_array_equal(
        match_lib.reference_counts(pred, gt, 0.02, seed), runs[0])
    got.append(runs[0][0])
  assert len(set(got)) > 1, got  # the seed reaches the matcher


def test_outlier_draws_replay_the_compiled_kofn():
  # boundary_assign replays correspondPixels' random stream: the same
  # kOfN values, call after call, as the compiled code after the same seed
  # (both kOfN branches: small k*log2(k) < n/2 and large).
  lib = ctypes.CDLL(sys.modules[correspond_pixels.__module__].__file__)
  kofn = lib._Z4kOfNiiPi  # kOfN(int k, int n, int* values)
  kofn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
  rng = np.random.default_rng(0)
  stack = np.empty((64, 4), np.int64)
  for seed in (1, 99991, 2 ** 40 + 3):
    match_lib.seed_matcher(seed)
    state = np.array([seed], np.uint64)
    for _ in range(3000):
      k = int(rng.integers(0, 7))
      n = k + int(rng.integers(0, 40 if rng.random() < 0.5 else 5000))
      want = np.zeros(7, np.int32)
      got = np.zeros(7, np.int64)
      kofn(k, n, want.ctypes.data)
      boundary_assign._kofn(k, n, got, state, stack)
      np.testing.assert_array_equal(got[:k], want[:k])


def test_assign_equals_correspond_pixels_where_outliers_decide():
  # The map of test_seed_makes_the_matcher_reproducible: for some seeds
  # the sparse outlier graph makes correspondPixels leave matchable pixels
  # out (fewer than the maximum matching). The assignment solver must
  # reproduce those counts, seed by seed, at every threshold.
  gt, prob = _ambiguous_map()
  assign = boundary_assign.Assign(gt, 0.02)
  short = 0
  for t in (0.2, 0.3, 0.5, 0.7):
    pred = match_lib.thin(prob > t)
    ys, xs = np.nonzero(pred)
    top = match_lib.max_cardinality_counts(pred, gt, 0.02)
    # The same pixels in any order (ids by sort, not by counting): same.
    perm = np.random.default_rng(int(t * 10)).permutation(ys.size)
    for seed in range(1, 9):
      want = match_lib.bsds_counts(pred, gt, 0.02, seed)
      np.testing.assert_array_equal(assign.pixels(ys, xs, seed), want)
      np.testing.assert_array_equal(
          assign.pixels(ys[perm], xs[perm], seed), want)
      short += want[0] < top[0]
  assert short > 0  # the outlier graph's defects were exercised
  # The pairs of every pixel asked for were cached, once.
  assert assign._indptr.size - 1 == np.count_nonzero(assign._row >= 0)  # pylint: disable=protected-access


def test_assign_equals_correspond_pixels_on_tiny_maps():
  # 1-6 pixels a map: outlier degrees below 6 (min(6, n - 1), 0 for one
  # pixel), both kOfN branches, n1 < n2, n1 == n2, n1 > n2.
  rng = np.random.default_rng(7)
  sizes = set()
  for trial in range(60):
    pred = np.zeros((6, 7), bool)
    gt = np.zeros((6, 7), bool)
    pred.flat[rng.choice(42, int(rng.integers(1, 7)), replace=False)] = True
    gt.flat[rng.choice(42, int(rng.integers(1, 7)), replace=False)] = True
    assign = boundary_assign.Assign(gt, 0.2)
    want = match_lib.bsds_counts(pred, gt, 0.2, trial + 1)
    np.testing.assert_array_equal(
        assign.pixels(*np.nonzero(pred), trial + 1), want)
    sizes.add((int(pred.sum()), int(gt.sum())))
  assert any(p < g for p, g in sizes) and any(p > g for p, g in sizes)


@pytest.mark.parametrize("case", range(4))
def test_fast_equals_reference_on_test_scenes(case):
  rng = np.random.default_rng(10 + case)
  h, w = 72, 96
  seg = _voronoi(rng, h, w)
  if case >= 2:  # content in one corner: the window is much smaller
    seg = np.pad(seg[: h // 2, : w // 2] + 1, ((0, h - h // 2),
                                                 (0, w - w // 2)))
  prob = _prediction(rng, boundary.seg2bmap(seg))
  if case == 3:
    prob[:, : w // 3] = 0  # prediction in a different box than the gt
  for max_dist in (boundary.MAX_DIST_PASCAL, boundary.MAX_DIST_NYUD, 0.03):
    fast, slow = _both(prob, seg, max_dist, thresholds=21,
                       gt_mode="segmentation")
    np.testing.assert_array_equal(fast, slow)
    assert fast[:, 0].max() > 0  # something matched at all


def test_fast_equals_reference_on_synthetic_scenes_val():
  cfg = scenes.derive_config("pascal_like")
  rng = np.random.default_rng(3)
  matched = 0
  for i in range(3):
    ex = scenes.render_example(cfg, "validation", i)
    prob = _prediction(rng, ex["edge"])
    for gt, mode in ((ex["edge"], "boundary"),
                     (ex["instance"], "segmentation")):
      # SEISM's 101 thresholds on the first image, 25 on the others (time).
      fast, slow = _both(prob, gt, scenes.EDGE_MAX_DIST, gt_mode=mode,
                         thresholds=None if i == 0 else 25)
      np.testing.assert_array_equal(fast, slow)
      matched += fast[:, 0].sum()
  assert matched > 0


def test_empty_maps_skip_the_matcher_alike():
  gt = np.zeros((30, 40), np.uint8)
  gt[10, 5:35] = 1
  for prob, g in ((np.zeros((30, 40)), gt), (gt * 0.9, np.zeros_like(gt)),
                  (np.zeros((30, 40)), np.zeros_like(gt))):
    fast, slow = _both(prob, g, 0.05, thresholds=[0.2, 0.5, 0.95],
                       gt_mode="boundary")
    np.testing.assert_array_equal(fast, slow)


def test_threshold_chunks_and_pool_give_the_same_counts():
  rng = np.random.default_rng(4)
  data = [(_prediction(rng, boundary.seg2bmap(s)), s)
          for s in (_voronoi(rng, 40, 56) for _ in range(2))]
  counts = []
  for processes, chunks in ((0, 1), (0, 3), (1, 2)):
    if processes == 0 and chunks > 1:  # chunks by hand, as a worker does
      out = []
      for prob, seg in data:
        c = np.zeros((11, 4))
        for i in range(chunks):
          idx = np.arange(i, 11, chunks)
          c[idx] = boundary.image_counts(prob, seg, 0.03, 11, indices=idx,
                                         gt_mode="segmentation")
        out.append(c)
      counts.append(np.stack(out))
      continue
    ev = boundary.BoundaryEvaluator(0.03, 11, gt_mode="segmentation",
                                    processes=processes, chunks=chunks)
    for prob, seg in data:
      ev.add(prob, seg)
    ev.close()
    assert ev.done == ev.submitted == 2
    counts.append(ev.counts)
  for c in counts[1:]:
    np.testing.assert_array_equal(c, counts[0])


def _max_cardinality_kdtree(pred, gt, max_dist):
  """The original max_cardinality (cKDTree pairs), frozen as reference."""
  sum_p, sum_r = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
  if sum_p == 0 or sum_r == 0:
    return np.array([0, sum_r, 0, sum_p], np.float64)
  p, g = np.argwhere(pred), np.argwhere(gt)
  pairs = spatial.cKDTree(p).sparse_distance_matrix(
      spatial.cKDTree(g), max_dist * np.hypot(*pred.shape),
      output_type="ndarray")
  graph = sparse.csr_matrix(
      (np.ones(len(pairs)), (pairs["i"], pairs["j"])), shape=(sum_p, sum_r))
  n = int(np.count_nonzero(
      csgraph.maximum_bipartite_matching(graph, perm_type="column") >= 0))
  return np.array([n, sum_r, n, sum_p], np.float64)


def test_max_cardinality_gather_equals_kdtree_pairs():
  rng = np.random.default_rng(5)
  for h, w, md in ((72, 96, 0.03), (90, 120, boundary.MAX_DIST_PASCAL),
                   (60, 80, boundary.MAX_DIST_NYUD)):
    gt = boundary.seg2bmap(_voronoi(rng, h, w))
    prob = _prediction(rng, gt)
    match = match_lib.MaxCardinality(gt, md)
    for t in (0.05, 0.2, 0.4, 0.6, 0.8):
      pred = match_lib.thin(prob >= t)
      np.testing.assert_array_equal(match(pred),
                                    _max_cardinality_kdtree(pred, gt, md))
