"""SEISM boundary protocol (mtdense_jax/evaluators/boundary.py).

Known-answer cases on tiny synthetic maps, plus agreement with pyEdgeEval's
own evaluation on the same data. correspondPixels (BSDS, compiled in
pyEdgeEval) builds a random sparse outlier graph; SEISM seeds it from the
clock, so its counts can differ from run to run by a few pixels on dense,
ambiguous maps. image_counts reseeds it (seed=1 by default, so these runs
are deterministic), but the tolerances below keep to what any seed gives.
Exactness of the fast path: test_boundary_fast.py.
"""

from __future__ import annotations

import numpy as np
from pyEdgeEval.common.binary_label.calculate_metrics import (
    calculate_metrics as pee_calculate_metrics)
from pyEdgeEval.common.binary_label.evaluate_boundaries import (
    evaluate_boundaries_threshold as pee_evaluate)
import pytest
from scipy import ndimage
from skimage.morphology import thin as skimage_thin

from mtdense_jax.evaluators import boundary

H, W = 32, 48
THR = [0.25, 0.5, 0.75]


def _line(h: int, w: int, row: int, c0: int, c1: int) -> np.ndarray:
  out = np.zeros((h, w), np.uint8)
  out[row, c0:c1] = 1
  return out


def _median_counts(*args, repeats: int = 5, **kw) -> np.ndarray:
  """Median over runs of image_counts: correspondPixels is random."""
  return np.median([boundary.image_counts(*args, **kw)
                    for _ in range(repeats)], axis=0)


def _f(counts: np.ndarray) -> float:
  return boundary.summarize(np.asarray(counts)[None])["odsF"]


def test_seism_thresholds():
  t = boundary.resolve_thresholds(None)
  expected = [0.001] + [round(0.01 * k, 2) for k in range(1, 100)] + [0.999]
  assert t.shape == (101,)
  np.testing.assert_allclose(t, expected, rtol=0, atol=1e-12)
  # int K: edgesEvalImg's linspace(1/(K+1), 1-1/(K+1), K).
  np.testing.assert_allclose(boundary.resolve_thresholds(3),
                             [0.25, 0.5, 0.75], atol=1e-12)


def test_quantize_truncates_like_astype_uint8():
  got = boundary.quantize_uint8(np.array([0.5, 1.0, 0.0039, 0.004]))
  # 127.5 -> 127, 255 -> 255, 0.99 -> 0, 1.02 -> 1 (truncation, not round).
  np.testing.assert_array_equal(got * 255, np.float32([127, 255, 0, 1]))


def test_seg2bmap_offsets_toward_origin():
  seg = np.zeros((6, 8), int)
  seg[:, 5:] = 1  # vertical split between columns 4 and 5
  b = boundary.seg2bmap(seg)
  expected = np.zeros((6, 8), bool)
  expected[:, 4] = True  # the pixel left of the change (E / SE neighbour)
  np.testing.assert_array_equal(b, expected)
  # A binary 1-px line read as a segmentation becomes a 2-px band (the
  # SEISM-NYUD reading of edge PNGs).
  band = boundary.seg2bmap(_line(8, 10, 4, 2, 8))
  assert band[3, 2:8].all() and band[4, 2:8].all()


def test_nms_thins_a_blurred_ring():
  yy, xx = np.mgrid[:H, :W]
  dist = np.hypot(yy - 15.5, xx - 23.5)
  prob = np.exp(-0.5 * ((dist - 10) / 1.5) ** 2)  # ridge on a radius-10 ring
  out = boundary.edge_nms(prob.astype(np.float32))
  kept = out > 0.05
  assert np.abs(dist[kept] - 10).max() <= 1.0
  assert kept.sum() < (prob > 0.05).sum() / 3
  # Every angle keeps its ridge pixel: about one pixel per unit of length.
  assert kept.sum() >= 2 * np.pi * 10 * 0.9


def test_nms_fades_the_border():
  # A perfectly horizontal edge has Oxy == 0, so sign(-Oxy) = 0 and O = 0,
  # as in MATLAB: nothing is suppressed, only the s = 5 border fade acts.
  prob = ndimage.gaussian_filter(_line(H, W, 16, 0, W).astype(float), 1.5)
  prob = (prob / prob.max()).astype(np.float32)
  out = boundary.edge_nms(prob)
  for x in range(5):  # edgesNmsMex: column x < 5 scaled by x / 5
    np.testing.assert_allclose(out[16, x], prob[16, x] * x / 5, rtol=1e-6)
  np.testing.assert_allclose(out[16, 5:-5], prob[16, 5:-5], rtol=1e-6)


def test_perfect_prediction_gives_f1():
  gt = np.zeros((H, W), np.uint8)
  gt[8, 8:40] = gt[12:28, 6] = 1  # a horizontal and a vertical segment
  gt[np.arange(14, 26), np.arange(14, 26)] = 1  # and a diagonal one
  assert (skimage_thin(gt) == gt).all()  # thinning leaves it alone
  for nms in (False, True):
    c = boundary.image_counts(gt.astype(float), gt, 0.0075, THR, nms=nms,
                              matcher="max_cardinality")
    np.testing.assert_array_equal(c[:, 0], c[:, 1])  # every gt pixel matched
    np.testing.assert_array_equal(c[:, 2], c[:, 3])  # every pred pixel too
    assert _f(c) == 1.0
    # correspondPixels: its random outlier graph drops a pixel in ~10 % of
    # runs on this map (200 runs: 181 x 60/60, 18 x 59, 1 x 58).
    c = _median_counts(gt.astype(float), gt, 0.0075, THR, nms=nms)
    np.testing.assert_array_equal(c[:, 3], c[:, 1])
    np.testing.assert_allclose(c[:, [0, 2]], c[:, [1, 3]], atol=1)
    assert _f(c) >= 0.98


def test_prediction_is_thinned_but_gt_is_not():
  # edgesEvalImg thins E1 only: a rectangle outline loses its 4 corners in
  # the prediction (bwmorph thin) while the gt keeps them.
  gt = np.zeros((H, W), np.uint8)
  gt[8, 8:40] = gt[24, 8:40] = gt[8:25, 8] = gt[8:25, 39] = 1
  n_thin = int(skimage_thin(gt).sum())
  assert n_thin < gt.sum()
  c = _median_counts(gt.astype(float), gt, 0.0075, THR, nms=False)
  np.testing.assert_array_equal(c[:, [1, 3]], [[gt.sum(), n_thin]] * 3)
  # All predicted pixels sit on gt pixels; the BSDS matcher's random sparse
  # outlier graph can still leave one or two of them unmatched.
  np.testing.assert_allclose(c[:, [0, 2]], n_thin, atol=2)


@pytest.mark.parametrize("h,w,max_dist,inside,outside", [
    (H, W, 2.5 / np.hypot(H, W), 1, 4),
    (375, 500, boundary.MAX_DIST_PASCAL, 4, 6),  # 0.0075 * 625 = 4.7 px
    (448, 576, boundary.MAX_DIST_NYUD, 7, 9),  # 0.011 * 729.7 = 8.0 px
])
def test_shift_inside_and_outside_tolerance(h, w, max_dist, inside, outside):
  row = h // 2
  gt = _line(h, w, row, 10, w - 10)
  near = _median_counts(_line(h, w, row + inside, 10, w - 10).astype(float),
                        gt, max_dist, THR, repeats=3)
  far = boundary.image_counts(_line(h, w, row + outside, 10, w - 10)
                              .astype(float), gt, max_dist, THR)
  # Every pixel has a partner in range; the BSDS matcher's random outlier
  # graph may still drop a handful (seen: up to 3 of 480): F >= 0.99.
  assert _f(near) >= 0.99
  assert _f(far) == 0.0
  assert far[:, 3].min() > 0  # it predicted, just too far away


def test_empty_cases_follow_eval_cont():
  gt = _line(H, W, 16, 10, 38)
  none = boundary.image_counts(np.zeros((H, W)), gt, 0.05, THR)
  np.testing.assert_array_equal(none, [[0, 28, 0, 0]] * 3)
  prec, rec = boundary._image_pr(none)  # nothing predicted: R 0, P 1
  np.testing.assert_array_equal(rec, 0.0)
  np.testing.assert_array_equal(prec, 1.0)
  no_gt = boundary.image_counts(gt.astype(float), np.zeros((H, W)), 0.05,
                                THR)
  np.testing.assert_array_equal(no_gt, [[0, 0, 0, 28]] * 3)
  prec, rec = boundary._image_pr(no_gt)  # no gt boundary: R 1, P 0
  np.testing.assert_array_equal(rec, 1.0)
  np.testing.assert_array_equal(prec, 0.0)
  for c in (none, no_gt):
    assert boundary.summarize(c[None]) == {"odsF": 0.0, "oisF": 0.0,
                                           "AP": 0.0}
  # Dataset level: an image without gt still adds false positives.
  perfect = boundary.image_counts(gt.astype(float), gt, 0.05, THR,
                                  matcher="max_cardinality")
  both = boundary.summarize(np.stack([perfect, no_gt]))
  p, r = 28 / 56, 1.0
  assert both["odsF"] == pytest.approx(2 * p * r / (p + r), abs=1e-12)


def test_summarize_hand_computed_curve():
  ev = boundary.BoundaryEvaluator(0.0075, thresholds=[0.2, 0.5, 0.8])
  # P/R per threshold: (0.5, 1), (1, 0.5), nothing predicted -> (1, 0).
  ev.add_counts([[100, 100, 100, 200], [50, 100, 50, 50], [0, 100, 0, 0]])
  out = ev.compute()
  assert out["odsF"] == pytest.approx(2 / 3, abs=1e-12)
  assert out["oisF"] == pytest.approx(2 / 3, abs=1e-12)
  # interp1 of P over R at 0:.01:1: 51 points at 1 for R <= .5, then
  # P = 1.5 - R for R = .51 .. 1 (sum 37.25); / 100.
  assert out["AP"] == pytest.approx((51 + 37.25) / 100, abs=1e-12)
  curve = ev.curve()
  np.testing.assert_allclose(curve["recall"], [1.0, 0.5, 0.0], atol=1e-12)
  np.testing.assert_allclose(curve["precision"], [0.5, 1.0, 1.0], atol=1e-12)


def test_ois_uses_each_images_best_threshold():
  a = [[10, 10, 10, 10], [0, 10, 0, 0]]  # best at t0 (F 1)
  b = [[10, 10, 10, 40], [10, 10, 10, 10]]  # best at t1 (F 1)
  out = boundary.summarize(np.array([a, b], float))
  assert out["oisF"] == 1.0
  # ODS: t0 -> R 1, P 20/50; t1 -> R 0.5, P 1.
  assert out["odsF"] == pytest.approx(max(2 * .4 / 1.4, 2 * .5 / 1.5),
                                      abs=1e-12)


def test_crop_drops_centred_padding():
  gt = _line(H, W, 16, 10, 38)
  prob = ndimage.gaussian_filter(gt.astype(float), 1.0) * 3
  pad_gt = np.full((H + 9, W + 6), 255, np.uint8)
  pad_prob = np.zeros(pad_gt.shape)
  pad_gt[4:4 + H, 3:3 + W] = gt  # InvPT/our Pad: top = 9 // 2, left = 3
  pad_prob[4:4 + H, 3:3 + W] = np.clip(prob, 0, 1)
  with pytest.raises(ValueError, match="255"):
    boundary.image_counts(pad_prob, pad_gt, 0.05, THR)
  got = _median_counts(pad_prob, pad_gt, 0.05, THR, crop=(H, W))
  want = _median_counts(np.clip(prob, 0, 1), gt, 0.05, THR)
  np.testing.assert_array_equal(got[:, [1, 3]], want[:, [1, 3]])
  np.testing.assert_allclose(got[:, [0, 2]], want[:, [0, 2]], atol=2)  # noise
  np.testing.assert_array_equal(  # explicit (top, left, h, w) box
      boundary.apply_crop(pad_gt, (4, 3, H, W)), gt)


def _scene(rng, h=48, w=64):
  """Voronoi segmentation, its boundaries and a blurred noisy prediction."""
  pts = rng.random((6, 2)) * [h, w]
  yy, xx = np.mgrid[:h, :w]
  seg = np.argmin((yy[..., None] - pts[:, 0]) ** 2
                  + (xx[..., None] - pts[:, 1]) ** 2, -1)
  gt = boundary.seg2bmap(seg)
  jitter = ndimage.shift(gt.astype(float), rng.integers(-1, 2, 2), order=0)
  prob = ndimage.gaussian_filter(jitter, 1.0)
  prob = np.clip(prob / prob.max() + 0.2 * rng.random((h, w)), 0, 1)
  return seg, gt, prob


def test_agrees_with_pyedgeeval():
  rng = np.random.default_rng(0)
  thr = boundary.resolve_thresholds(9)
  md = 0.02
  mine, theirs = [], []
  for _ in range(3):
    seg, gt, prob = _scene(rng)
    # Same pipeline on both sides: no NMS, no quantisation, thinning on.
    mine.append(boundary.image_counts(prob, seg, md, thr, nms=False,
                                      gt_mode="segmentation",
                                      quantize=False))
    r = pee_evaluate(
        thr, prob, gt, max_dist=md, apply_thinning=True, apply_nms=False)
    theirs.append(np.stack(r, axis=1))  # count_r, sum_r, count_p, sum_p
  mine, theirs = np.array(mine), np.array(theirs)
  # Pixel totals are deterministic: sumR exactly; sumP exactly unless the
  # two thinning implementations differ (skimage vs pyEdgeEval's LUT).
  np.testing.assert_array_equal(mine[..., 1], theirs[..., 1])
  np.testing.assert_allclose(mine[..., 3], theirs[..., 3], rtol=0.01)
  # Matched counts: the stochastic matcher, <= 2 % + 2 pixels apart.
  np.testing.assert_allclose(mine[..., [0, 2]], theirs[..., [0, 2]],
                             rtol=0.02, atol=2)
  # Aggregation on identical counts: OIS identical, ODS = their best
  # per-threshold F (they also interpolate between thresholds, so theirs
  # is >= ours), both to 1e-12.
  samples = [{"name": str(i)} for i in range(len(theirs))]
  counts = {str(i): tuple(c.T) for i, c in enumerate(theirs)}
  _, per_thr, overall = pee_calculate_metrics(
      eval_single=lambda s: counts[s["name"]], thresholds=list(thr),
      samples=samples, nproc=1)
  ours = boundary.summarize(theirs)
  assert ours["oisF"] == pytest.approx(overall["OIS_f1"], abs=1e-12)
  assert ours["odsF"] == pytest.approx(max(t["f1"] for t in per_thr),
                                       abs=1e-12)
  assert ours["odsF"] <= overall["ODS_f1"] + 1e-12
  # Our own counts give the same scores to the matcher's noise level.
  assert boundary.summarize(mine)["odsF"] == pytest.approx(ours["odsF"],
                                                           abs=0.01)


def test_evaluator_pool_matches_inline(monkeypatch):
  # The deterministic matcher makes pool and inline results comparable
  # exactly (and checks the options travel to the worker). processes=-1:
  # the first AUTO_INLINE images inline, the rest in a pool (one process
  # per core), in order.
  monkeypatch.setattr(boundary, "AUTO_INLINE", 1)
  rng = np.random.default_rng(1)
  data = [_scene(rng, 32, 48) for _ in range(3)]
  counts = []
  for processes in (0, -1):
    ev = boundary.BoundaryEvaluator(0.05, thresholds=THR,
                                    gt_mode="segmentation",
                                    processes=processes,
                                    matcher="max_cardinality")
    for seg, _, prob in data:
      ev.add(prob, seg)
      if processes and ev.submitted == 1:
        assert ev.done == 1 and ev._pool is None  # pylint: disable=protected-access
    multi_core = ev._processes > 0  # pylint: disable=protected-access
    assert (ev._pool is not None) == (processes != 0 and multi_core)  # pylint: disable=protected-access
    ev.close()
    counts.append(ev.counts)
    assert set(ev.compute()) == {"odsF", "oisF", "AP"}
  assert counts[0].shape == (3, 3, 4)
  np.testing.assert_array_equal(counts[0], counts[1])


def test_max_cardinality_matcher_bounds_bsds():
  # Hopcroft-Karp finds the true maximum of the pairs BSDS can use, so it
  # is exact on the known-answer cases and never below correspondPixels.
  h, w, md = 375, 500, boundary.MAX_DIST_PASCAL
  gt = _line(h, w, 180, 10, w - 10)
  for shift, want in ((4, 1.0), (6, 0.0)):
    pred = _line(h, w, 180 + shift, 10, w - 10).astype(float)
    c = boundary.image_counts(pred, gt, md, THR, matcher="max_cardinality")
    assert _f(c) == want
  rng = np.random.default_rng(2)
  for _ in range(2):
    seg, _, prob = _scene(rng)
    kw = dict(thresholds=5, gt_mode="segmentation")
    ref = boundary.image_counts(prob, seg, 0.02, **kw)
    fast = boundary.image_counts(prob, seg, 0.02, matcher="max_cardinality",
                                 **kw)
    np.testing.assert_array_equal(fast[:, [1, 3]], ref[:, [1, 3]])
    assert (fast[:, [0, 2]] >= ref[:, [0, 2]]).all()
    np.testing.assert_allclose(fast[:, [0, 2]], ref[:, [0, 2]], rtol=0.02,
                               atol=2)
