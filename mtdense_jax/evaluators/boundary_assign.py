"""correspondPixels' counts without its CSA run: same problem, faster solver.

BSDS ``matchEdgeMaps`` (pyEdgeEval ``_lib/src/match.cc``, the compiled code
``boundary_match.bsds_counts`` calls) turns two boundary maps into one
min-cost perfect assignment and hands it to CSA. The problem, with n1
matchable predicted and n2 matchable gt pixels (a pixel is matchable when
the other map has a pixel within maxDist), each side numbered column-major:

* left nodes: the n1 predicted pixels, then n2 gt "outlier" nodes; right
  nodes: the n2 gt pixels, then n1 predicted outlier nodes;
* real edges: every (pred, gt) pair within maxDist, cost
  ``rint(100 * distance)``;
* outlier edges, cost ``ow = ceil(100 * outlierCost)`` (outlierCost =
  100 maxDist, in pixels, as correspond_pixels passes it): each pixel to
  ``kOfN(6, n - 1)`` random outlier nodes of its own map (its own index
  excluded), and ``kOfN(6, nmin)`` random outlier-outlier edges for each
  node of the larger map; all draws from one ``erand48`` stream, in that
  order;
* a perfect-match overlay ``(i, outlier i)`` of cost ``100 * ow``.

The counts only need k, the number of real pairs in an optimal assignment
(cntR = cntP = k). CSA is exact on integer costs, so any exact solver of
the SAME problem gives the same optimal cost, and the same k unless two
optima differ in k, which needs their real costs to differ by an exact
multiple of ow (not seen in any comparison; see tests/test_boundary_fast.py
and benchmarks/boundary_eval.py). Here:

1. The random stream is replayed bit for bit (``_kofn``: erand48's 48-bit
   LCG, both kOfN branches, the same float comparisons), from the seed that
   ``boundary_match.seed_matcher`` would set.
2. The relaxed problem (outlier nodes free to pair with anything: each
   unmatched pixel costs ow) separates into the connected pieces of the
   real-edge graph; it is solved exactly by shortest augmenting paths
   (Dijkstra on reduced costs) from the smaller map's pixels, each search
   staying inside its piece. Its optimal duals, with every outlier node
   at ow / 2, are feasible duals of the full problem in which the relaxed
   matching's edges and every unmatched pixel's outlier edges are tight.
3. Hopcroft-Karp on the tight edges (a graph of just those, about half
   of the full one, built straight from the draws) completes that
   matching as far as the random outlier graph allows; the few nodes left
   free (the sparse outlier graph's defects, which is why correspondPixels
   leaves a few matchable pixels unmatched) are placed by Dijkstra
   augmentations on the full problem (its graph built only then: ~40 % of
   the solves on the benchmark's scenes). The result is an optimal
   assignment of the full problem.

Costs are doubled so that the duals stay integers. Exactness does not
rest on steps 2-3 being optimal: any matching with feasible duals and
tight matched edges, completed by Dijkstra augmentations, is an optimal
assignment; they only make the final searches few (the Dijkstra searches
take nodes at the frontier distance from a stack, not the heap: any
shortest path will do). Across thresholds of one image, each predicted
pixel's candidate gt pixels are gathered once (``Assign.prepare``).
Cost (numba, one core): ~0.5-5 ms per solve of ~6,000 matchable
pixels; no stage dominates: the draws (~1 ms: ~10^5 steps of the random
stream, inherently serial), the relaxed solve, Hopcroft-Karp and the
repair each take 15-25 % (benchmarks/boundary_eval.py prints each).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numba
import numpy as np
from scipy import ndimage

_DEGREE = 6          # match.cc: outlier connections per node
_MULTIPLIER = 100    # match.cc: float costs -> integers
_INF = np.int64(1) << np.int64(62)


# ------------------------------------------------------------ random stream

_LCG_A = 0x5DEECE66D
_LCG_MASK = (1 << 48) - 1
_TWO_M48 = 1.0 / 281474976710656.0


@numba.njit(cache=True, inline="always")
def _step(x: int) -> int:
  """glibc erand48's X <- (0x5DEECE66D X + 11) mod 2^48 (in uint64: the
  wrapped product keeps the low 48 bits; X < 2^48 fits an int64)."""
  return np.int64((np.uint64(x) * np.uint64(_LCG_A) + np.uint64(0xB))
                  & np.uint64(_LCG_MASK))


@numba.njit(cache=True, inline="always")
def _below(x: int, m: int) -> int:
  """Random::i32(0, m - 1) of the drawn X: floor(X / 2^48 * m + 0), in
  doubles (+ 0.0 and floor vs truncation change nothing: all >= 0)."""
  return int((float(x) * _TWO_M48) * float(m))


@numba.njit(cache=True)
def _kofn_small(k: int, n: int, vals: np.ndarray, x: int,
                stack: np.ndarray) -> int:
  """kofn.cc _kOfN_smallK, its recursion unrolled (left part first);
  stack: (64, 4) scratch of (k, n, offset, base); x: the stream's state,
  returned advanced."""
  stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = k, n, 0, 0
  top = 1
  while top > 0:
    top -= 1
    kk, nn, off, base = stack[top, 0], stack[top, 1], stack[top, 2], stack[
        top, 3]
    if kk == 1:
      x = _step(x)
      vals[off] = base + _below(x, nn)
      continue
    left_n = nn // 2
    left_k = 0
    for i in range(kk):
      x = _step(x)
      if _below(x, nn - i) < left_n - left_k:
        left_k += 1
    right_k = kk - left_k
    if right_k > 0:  # pushed first, so drawn after the left part
      stack[top, 0], stack[top, 1] = right_k, nn - left_n
      stack[top, 2], stack[top, 3] = off + left_k, base + left_n
      top += 1
    if left_k > 0:
      stack[top, 0], stack[top, 1] = left_k, left_n
      stack[top, 2], stack[top, 3] = off, base
      top += 1
  return x


@numba.njit(cache=True)
def _small_branch(k: int, n: int) -> bool:
  """kOfN's choice: _kOfN_smallK when k log2 k < n / 2 (C ints)."""
  return k * math.log(k) / math.log(2.0) < float(n // 2)


@numba.njit(cache=True)
def _kofn_x(k: int, n: int, vals: np.ndarray, x: int,
            stack: np.ndarray, small: bool) -> int:
  """kofn.cc kOfN: k sorted distinct integers of [0, n); returns the
  advanced state. small: ``_small_branch(k, n)``."""
  if k == 0:
    return x
  if small:
    return _kofn_small(k, n, vals, x, stack)
  j = 0
  for i in range(n):
    x = _step(x)
    if float(x) * _TWO_M48 < float(k - j) / float(n - i):
      vals[j] = i
      j += 1
  return x


@numba.njit(cache=True)
def _kofn(k: int, n: int, vals: np.ndarray, state: np.ndarray,
          stack: np.ndarray):
  """``_kofn_x`` with the state in state[0] (uint64)."""
  small = k > 0 and _small_branch(k, n)
  state[0] = np.uint64(_kofn_x(k, n, vals, np.int64(state[0]), stack,
                               small))


@numba.njit(cache=True)
def _draw(count: int, k: int, n: int, skip_diagonal: bool,
          x: int) -> tuple[np.ndarray, int]:
  """count rows of kOfN(k, n), shifted past the row index if asked; and
  the advanced state."""
  out = np.empty((count, k), np.int64)
  buf = np.empty(max(k, 1), np.int64)
  stack = np.empty((64, 4), np.int64)
  small = k > 0 and _small_branch(k, n)  # once, not per row
  for i in range(count):
    x = _kofn_x(k, n, buf, x, stack, small)
    for a in range(k):
      j = buf[a]
      if skip_diagonal and j >= i:
        j += 1
      out[i, a] = j
  return out, x


# ----------------------------------------------- shortest augmenting paths

@numba.njit(cache=True)
def _heap_set(keys, vals, where, size, key, val):
  """Inserts val with key, or lowers its key if held (where[val]: its
  slot, -1 if out); returns the new size."""
  i = where[val]
  if i < 0:
    i = size
    size += 1
    vals[i] = val
  keys[i] = key
  while i > 0:
    p = (i - 1) >> 1
    if keys[p] <= key:
      break
    keys[i], vals[i] = keys[p], vals[p]
    where[vals[i]] = i
    i = p
  keys[i], vals[i] = key, val
  where[val] = i
  return size


@numba.njit(cache=True)
def _heap_pop(keys, vals, where, size):
  """(key, val, new size) of the smallest key."""
  key, val = keys[0], vals[0]
  where[val] = -1
  size -= 1
  if size == 0:
    return key, val, size
  k, x = keys[size], vals[size]
  i = 0
  while True:
    c = 2 * i + 1
    if c >= size:
      break
    if c + 1 < size and keys[c + 1] < keys[c]:
      c += 1
    if k <= keys[c]:
      break
    keys[i], vals[i] = keys[c], vals[c]
    where[vals[i]] = i
    i = c
  keys[i], vals[i] = k, x
  where[x] = i
  return key, val, size


@numba.njit(cache=True)
def _augment_all(indptr, indices, cost, u, v, mate_l, mate_r) -> bool:
  """Dijkstra augmentation from every free left node (reduced costs
  c - u - v >= 0, matched edges tight; both kept so). False if some left
  node cannot be matched."""
  n_l, n_r = u.size, v.size
  dist_l = np.full(n_l, _INF)
  dist_r = np.full(n_r, _INF)
  done_r = np.zeros(n_r, np.bool_)
  from_l = np.full(n_r, -1, np.int64)
  seen_l = np.empty(n_l, np.int64)
  seen_r = np.empty(n_r, np.int64)
  popped = np.empty(n_r, np.int64)
  zero = np.empty(n_r, np.int64)  # reached at the frontier distance
  # An indexed heap: one entry per right node, its key lowered in place
  # (entries stay few: a node is pushed once, not once per edge).
  keys = np.empty(n_r, np.int64)
  vals = np.empty(n_r, np.int64)
  where = np.full(n_r, -1, np.int64)
  for s in range(n_l):
    if mate_l[s] >= 0:
      continue
    n_sl, n_sr, n_pop, size, n_zero = 0, 0, 0, 0, 0
    dist_l[s] = 0
    seen_l[n_sl] = s
    n_sl += 1
    l, sink, reach = s, -1, np.int64(0)
    while True:
      dl, ul = dist_l[l], u[l]
      for e in range(indptr[l], indptr[l + 1]):
        r = indices[e]
        if done_r[r]:
          continue
        nd = dl + cost[e] - ul - v[r]
        if nd < dist_r[r]:
          if dist_r[r] == _INF:
            seen_r[n_sr] = r
            n_sr += 1
          dist_r[r] = nd
          from_l[r] = l
          if nd == dl:  # as near as the frontier: no heap needed
            zero[n_zero] = r
            n_zero += 1
          else:
            size = _heap_set(keys, vals, where, size, nd, r)
      r = -1
      if n_zero > 0:
        n_zero -= 1
        r = zero[n_zero]
      while r < 0 and size > 0:
        d, rr, size = _heap_pop(keys, vals, where, size)
        if not done_r[rr]:  # else taken from the stack meanwhile
          r = rr
          break
      if r < 0:
        break
      done_r[r] = True
      popped[n_pop] = r
      n_pop += 1
      if mate_r[r] < 0:
        sink, reach = r, dist_r[r]
        break
      l = mate_r[r]
      dist_l[l] = dist_r[r]
      seen_l[n_sl] = l
      n_sl += 1
    if sink >= 0:
      for a in range(n_sl):
        l = seen_l[a]
        u[l] += reach - dist_l[l]
      for a in range(n_pop):
        r = popped[a]
        v[r] -= reach - dist_r[r]
      r = sink
      while True:
        l = from_l[r]
        prev = mate_l[l]
        mate_l[l], mate_r[r] = r, l
        if l == s:
          break
        r = prev
    for a in range(size):  # empty the heap
      where[vals[a]] = -1
    for a in range(n_sl):
      dist_l[seen_l[a]] = _INF
    for a in range(n_sr):
      r = seen_r[a]
      dist_r[r], done_r[r], from_l[r] = _INF, False, -1
    if sink < 0:
      return False
  return True


@numba.njit(cache=True)
def _tight_max_matching(indptr, indices, cost, u, v, mate_l, mate_r):
  """Hopcroft-Karp on the tight edges (c == u + v), from the current
  matching."""
  n_l = u.size
  for l in range(n_l):  # greedy first: most nodes pair at once
    if mate_l[l] >= 0:
      continue
    for e in range(indptr[l], indptr[l + 1]):
      r = indices[e]
      if mate_r[r] < 0 and cost[e] == u[l] + v[r]:
        mate_l[l], mate_r[r] = r, l
        break
  layer = np.empty(n_l, np.int64)
  queue = np.empty(n_l, np.int64)
  it = np.empty(n_l, np.int64)
  stack = np.empty(n_l, np.int64)
  while True:
    head, tail = 0, 0
    for l in range(n_l):
      if mate_l[l] < 0:
        layer[l] = 0
        queue[tail] = l
        tail += 1
      else:
        layer[l] = -1
    found, found_at = False, np.int64(0)
    while head < tail:
      l = queue[head]
      head += 1
      if found and layer[l] > found_at:  # shortest paths only (HK)
        break
      for e in range(indptr[l], indptr[l + 1]):
        r = indices[e]
        if cost[e] != u[l] + v[r]:
          continue
        m = mate_r[r]
        if m < 0:
          if not found:
            found, found_at = True, layer[l]
        elif layer[m] < 0:
          layer[m] = layer[l] + 1
          queue[tail] = m
          tail += 1
    if not found:
      return
    for l in range(n_l):
      it[l] = indptr[l]
    augmented = 0
    for s in range(n_l):
      if mate_l[s] >= 0:
        continue
      depth = 0
      stack[0] = s
      while depth >= 0:
        l = stack[depth]
        advanced = False
        while it[l] < indptr[l + 1]:
          e = it[l]
          it[l] += 1
          r = indices[e]
          if cost[e] != u[l] + v[r]:
            continue
          m = mate_r[r]
          if m < 0:  # augment along the stack
            for a in range(depth, -1, -1):
              ll = stack[a]
              nxt = mate_l[ll]
              mate_l[ll], mate_r[r] = r, ll
              r = nxt
            augmented += 1
            depth = -1
            advanced = True
            break
          if layer[m] == layer[l] + 1:
            depth += 1
            stack[depth] = m
            advanced = True
            break
        if not advanced:
          layer[l] = -1  # dead end for this phase
          depth -= 1
    if augmented == 0:
      return


# ------------------------------------------------------------ the problem

@numba.njit(cache=True)
def _pixel_edges(pys, pxs, gid, near, pad, oy, ox, ocost):
  """Per pixel, its gt pixels within the disc (in offset order) and their
  costs, as CSR (indptr, gt index, cost); `near` marks the pixels with a
  gt pixel within it (the others get no row entries)."""
  indptr = np.zeros(pys.size + 1, np.int64)
  for p in range(pys.size):
    n = 0
    if near[pys[p], pxs[p]]:
      for o in range(oy.size):
        if gid[pys[p] + pad + oy[o], pxs[p] + pad + ox[o]] >= 0:
          n += 1
    indptr[p + 1] = indptr[p] + n
  gj = np.empty(indptr[-1], np.int64)
  c = np.empty(indptr[-1], np.int64)
  for p in range(pys.size):
    if not near[pys[p], pxs[p]]:
      continue
    n = indptr[p]
    for o in range(oy.size):
      g = gid[pys[p] + pad + oy[o], pxs[p] + pad + ox[o]]
      if g >= 0:
        gj[n], c[n] = g, ocost[o]
        n += 1
  return indptr, gj, c


@numba.njit(cache=True)
def _problem(ys, xs, height, width, row, indptr, cg, cc, gorder, sum_r):
  """The real edges (ei, ej, cost, n1, n2) of pixels (ys, xs) from their
  cached rows (``row``: pixel -> cache row), listed pixel by pixel in
  input order, each pixel's in offset order; node ids are column-major
  ranks among the matchable pixels (gorder: gt ids in column-major order).
  """
  n_p = ys.size
  keep1 = np.zeros(n_p, np.bool_)
  keep2 = np.zeros(sum_r, np.bool_)
  col = np.zeros(width + 1, np.int64)
  n_e, n1, row_major = 0, 0, True
  for p in range(n_p):
    if p and ys[p] * width + xs[p] <= ys[p - 1] * width + xs[p - 1]:
      row_major = False
    r = row[ys[p] * width + xs[p]]
    a, b = indptr[r], indptr[r + 1]
    if b > a:
      keep1[p] = True
      n1 += 1
      n_e += b - a
      col[xs[p] + 1] += 1
      for e in range(a, b):
        keep2[cg[e]] = True
  id1 = np.empty(n_p, np.int64)
  if row_major:  # counting sort by column keeps rows ascending
    for x in range(width):
      col[x + 1] += col[x]
    for p in range(n_p):
      if keep1[p]:
        id1[p] = col[xs[p]]
        col[xs[p]] += 1
  else:
    m1 = np.flatnonzero(keep1)
    id1[m1[np.argsort(xs[m1] * height + ys[m1])]] = np.arange(m1.size)
  id2 = np.empty(sum_r, np.int64)
  n2 = 0
  for j in gorder:
    if keep2[j]:
      id2[j] = n2
      n2 += 1
  ei = np.empty(n_e, np.int64)
  ej = np.empty(n_e, np.int64)
  ec = np.empty(n_e, np.int64)
  n_e = 0
  for p in range(n_p):
    if not keep1[p]:
      continue
    r = row[ys[p] * width + xs[p]]
    for e in range(indptr[r], indptr[r + 1]):
      ei[n_e], ej[n_e], ec[n_e] = id1[p], id2[cg[e]], cc[e]
      n_e += 1
  return ei, ej, ec, n1, n2


@numba.njit(cache=True)
def _csr(n_rows, rows, cols, costs):
  """CSR (indptr, indices, cost) of an edge list."""
  indptr = np.zeros(n_rows + 1, np.int64)
  for r in rows:
    indptr[r + 1] += 1
  for i in range(n_rows):
    indptr[i + 1] += indptr[i]
  fill = indptr[:-1].copy()
  indices = np.empty(rows.size, np.int64)
  cost = np.empty(rows.size, np.int64)
  for e in range(rows.size):
    r = rows[e]
    indices[fill[r]], cost[fill[r]] = cols[e], costs[e]
    fill[r] += 1
  return indptr, indices, cost


@numba.njit(cache=True)
def _greedy(indptr, indices, cost, u, v, mate_l, mate_r):
  """Row minima as left duals, then tight edges matched greedily."""
  for l in range(u.size):
    best = _INF
    for e in range(indptr[l], indptr[l + 1]):
      best = min(best, cost[e] - v[indices[e]])
    u[l] = best
    for e in range(indptr[l], indptr[l + 1]):
      r = indices[e]
      if mate_r[r] < 0 and cost[e] - v[r] == best:
        mate_l[l], mate_r[r] = r, l
        break


@numba.njit(cache=True)
def _relaxed(ei, ej, ec, n1, n2, ow):
  """Step 2: the relaxed problem's optimum, as full-problem duals and a
  partial matching (ok, fu, fv, mate_l, mate_r).

  Costs doubled. Solved as a rectangular assignment: every pixel of the
  smaller map ("left") is matched, to a pixel of the other map (2c) or to
  a private dummy (2 ow: left unmatched); the other map's pixels may stay
  free. Its cost differs from the relaxed one (ow per unmatched pixel of
  either map) by a constant, so the optima agree. Shortest augmenting
  paths from v = 0 keep v <= 0 with v = 0 on free nodes, so
  b = v + ow (other map) and a = min(u - ow, ow) (left) are feasible
  duals of the full problem with every outlier node at ow: a + b <= 2c,
  tight on the matching, a, b <= ow, = ow on unmatched pixels. Searches
  start from the smaller map only: the larger map's surplus needs none.
  """
  swap = n1 > n2
  nl, nr = (n2, n1) if swap else (n1, n2)
  m_real = ei.size
  rows = np.empty(m_real + nl, np.int64)
  cols = np.empty(m_real + nl, np.int64)
  cst = np.empty(m_real + nl, np.int64)
  for e in range(m_real):
    if swap:
      rows[e], cols[e] = ej[e], ei[e]
    else:
      rows[e], cols[e] = ei[e], ej[e]
    cst[e] = 2 * ec[e]
  for l in range(nl):
    rows[m_real + l], cols[m_real + l], cst[m_real + l] = l, nr + l, 2 * ow
  indptr, indices, cost = _csr(nl, rows, cols, cst)
  u = np.zeros(nl, np.int64)
  v = np.zeros(nr + nl, np.int64)
  mate_l = np.full(nl, -1, np.int64)
  mate_r = np.full(nr + nl, -1, np.int64)
  _greedy(indptr, indices, cost, u, v, mate_l, mate_r)
  ok = _augment_all(indptr, indices, cost, u, v, mate_l, mate_r)
  n = n1 + n2
  fu = np.full(n, ow, np.int64)  # outlier nodes: ow
  fv = np.full(n, ow, np.int64)
  fmate_l = np.full(n, -1, np.int64)
  fmate_r = np.full(n, -1, np.int64)
  for l in range(nl):
    a = min(u[l] - ow, ow)
    if swap:
      fv[l] = a
    else:
      fu[l] = a
  for r in range(nr):
    if swap:
      fu[r] = v[r] + ow
    else:
      fv[r] = v[r] + ow
  for l in range(nl):
    r = mate_l[l]
    if r < nr:
      if swap:
        fmate_l[r], fmate_r[l] = l, r
      else:
        fmate_l[l], fmate_r[r] = r, l
  return ok, fu, fv, fmate_l, fmate_r


@numba.njit(cache=True)
def _outliers(n1, n2, seed):
  """Step 1: match.cc's outlier draws (map 1, map 2, outlier-outlier)."""
  x = np.int64(seed)
  d1 = max(0, min(_DEGREE, n1 - 1))
  d2 = max(0, min(_DEGREE, n2 - 1))
  d3 = min(_DEGREE, min(n1, n2))
  out1, x = _draw(n1, d1, n1 - 1, True, x)
  out2, x = _draw(n2, d2, n2 - 1, True, x)
  oo, x = _draw(max(n1, n2), d3, min(n1, n2), False, x)
  return out1, out2, oo


@numba.njit(cache=True)
def _graph(ei, ej, ec, n1, n2, ow, out1, out2, oo, fu, fv, tight_only):
  """matchEdgeMaps' assignment graph as CSR (costs doubled); tight_only:
  just its edges tight under the duals (c == fu + fv; outlier nodes sit at
  ow), in the same order.

  Each row lists, in order: pixel i: its real edges (as listed), its
  outlier edges out1[i], its overlay edge; gt outlier node j: the gt
  pixels whose draws hold j (ascending), its outlier-outlier edges, its
  overlay edge (the order of an edge list of real, out1, out2, oo and
  overlay edges turned into CSR), written straight into place.
  """
  n = n1 + n2
  d1, d2, d3 = out1.shape[1], out2.shape[1], oo.shape[1]
  nmax = max(n1, n2)
  w_out, w_over = 2 * ow, 2 * ow * _MULTIPLIER
  indptr = np.zeros(n + 1, np.int64)
  for e in range(ei.size):
    if not tight_only or 2 * ec[e] == fu[ei[e]] + fv[ej[e]]:
      indptr[ei[e] + 1] += 1
  for i in range(n1):
    if not tight_only or w_out == fu[i] + ow:
      indptr[i + 1] += d1
    if not tight_only or w_over == fu[i] + fv[n2 + i]:
      indptr[i + 1] += 1
  for j in range(n2):
    if not tight_only or w_out == ow + fv[j]:
      for a in range(d2):
        indptr[n1 + out2[j, a] + 1] += 1
  for i in range(nmax):  # outlier-outlier edges: always tight
    for a in range(d3):
      indptr[n1 + (i if n1 < n2 else oo[i, a]) + 1] += 1
  for j in range(n2):
    if not tight_only or w_over == fu[n1 + j] + fv[j]:
      indptr[n1 + j + 1] += 1
  for r in range(n):
    indptr[r + 1] += indptr[r]
  fill = indptr[:-1].copy()
  indices = np.empty(indptr[n], np.int64)
  cost = np.empty(indptr[n], np.int64)
  for e in range(ei.size):
    if not tight_only or 2 * ec[e] == fu[ei[e]] + fv[ej[e]]:
      at = fill[ei[e]]
      indices[at], cost[at] = ej[e], 2 * ec[e]
      fill[ei[e]] = at + 1
  for i in range(n1):
    at = fill[i]
    if not tight_only or w_out == fu[i] + ow:
      for a in range(d1):
        indices[at + a], cost[at + a] = n2 + out1[i, a], w_out
      at += d1
    if not tight_only or w_over == fu[i] + fv[n2 + i]:
      indices[at], cost[at] = n2 + i, w_over
  for j in range(n2):
    if not tight_only or w_out == ow + fv[j]:
      for a in range(d2):
        r = n1 + out2[j, a]
        indices[fill[r]], cost[fill[r]] = j, w_out
        fill[r] += 1
  for i in range(nmax):
    for a in range(d3):
      if n1 < n2:
        r, c = n1 + i, n2 + oo[i, a]
      else:
        r, c = n1 + oo[i, a], n2 + i
      indices[fill[r]], cost[fill[r]] = c, w_out
      fill[r] += 1
  for j in range(n2):  # the perfect-match overlay
    if not tight_only or w_over == fu[n1 + j] + fv[j]:
      r = n1 + j
      indices[fill[r]], cost[fill[r]] = j, w_over
  return indptr, indices, cost


Profile = Callable[[str], None] | None


def solve(ei: np.ndarray, ej: np.ndarray, ec: np.ndarray, n1: int, n2: int,
          ow: int, seed: int, profile: Profile = None) -> int:
  """k of an optimal assignment of matchEdgeMaps' problem (module doc).

  ei, ej: node ids (column-major ranks) of the real edges' ends; ec: their
  costs rint(100 d); ow: the integer outlier weight; seed: the erand48
  state. profile: a callable(stage) marking the end of each stage.
  """
  mark = profile or (lambda _: None)
  ok, fu, fv, mate_l, mate_r = _relaxed(ei, ej, ec, n1, n2, ow)
  mark("relaxed")
  out1, out2, oo = _outliers(n1, n2, seed)
  mark("draws")
  # Hopcroft-Karp only looks at tight edges (about half): a graph of
  # those; the full one only if it leaves free nodes.
  tight = _graph(ei, ej, ec, n1, n2, ow, out1, out2, oo, fu, fv, True)
  mark("graph")
  _tight_max_matching(*tight, fu, fv, mate_l, mate_r)
  mark("complete")
  if ok and np.any(mate_l < 0):
    full = _graph(ei, ej, ec, n1, n2, ow, out1, out2, oo, fu, fv, False)
    ok = _augment_all(*full, fu, fv, mate_l, mate_r)
  mark("repair")
  if not ok:
    raise RuntimeError("assignment failed (no perfect matching)")
  return int(np.count_nonzero(mate_l[:n1] < n2))


_SEED_MASK = (1 << 48) - 1


class Assign:
  """Exact correspondPixels counts against one gt map (per image).

  ``pixels(ys, xs, seed)`` gives [cntR, sumR, cntP, sumP] for the predicted
  pixels (ys, xs), as ``boundary_match.bsds_counts`` with that seed.
  """

  def __init__(self, gt: np.ndarray, max_dist: float):
    gt = np.asarray(gt, bool)
    h, w = gt.shape
    self.shape = (h, w)
    idiag = math.sqrt(h * h + w * w)  # as correspond_pixels.pyx computes
    dist = float(max_dist) * idiag
    self.ow = int(math.ceil(100.0 * float(max_dist) * idiag * _MULTIPLIER))
    pad = int(math.ceil(dist))
    dy, dx = np.mgrid[-pad:pad + 1, -pad:pad + 1]
    d2 = (dx * dx + dy * dy).astype(np.float64)
    keep = ~(d2 > dist * dist)  # match.cc: d2 > maxDist^2 skipped
    self._pad = pad
    self._oy, self._ox = dy[keep].astype(np.int64), dx[keep].astype(np.int64)
    self._oc = np.rint(np.sqrt(d2[keep]) * _MULTIPLIER).astype(np.int64)
    gy, gx = np.nonzero(gt)
    self.sum_r = int(gy.size)
    self._gid = np.full((h + 2 * pad, w + 2 * pad), -1, np.int64)
    self._gid[gy + pad, gx + pad] = np.arange(gy.size)
    disc = np.zeros((2 * pad + 1, 2 * pad + 1), bool)
    disc[dy[keep] + pad, dx[keep] + pad] = True
    self._near = ndimage.binary_dilation(gt, disc) if gy.size else gt
    self._gorder = np.lexsort((gy, gx))  # gt ids, column-major
    # Edge cache: pixel -> row of (gt ids, costs), -1 until first asked
    # for; rows are computed once per image (``prepare`` or on demand).
    self._row = np.full(h * w, -1, np.int64)
    self._indptr = np.zeros(1, np.int64)
    self._cg = np.zeros(0, np.int64)
    self._cc = np.zeros(0, np.int64)

  def prepare(self, ys: np.ndarray, xs: np.ndarray) -> None:
    """Caches the candidate pairs of pixels (ys, xs) (e.g. every pixel any
    threshold can predict), so later calls only gather them."""
    flat = np.asarray(ys, np.int64) * self.shape[1] + np.asarray(xs, np.int64)
    flat = np.unique(flat[self._row[flat] < 0])
    if flat.size == 0:
      return
    ys, xs = np.divmod(flat, self.shape[1])
    indptr, cg, cc = _pixel_edges(ys, xs, self._gid, self._near, self._pad,
                                  self._oy, self._ox, self._oc)
    start = self._indptr.size - 1
    self._row[flat] = np.arange(start, start + flat.size)
    self._indptr = np.concatenate([self._indptr,
                                   self._indptr[-1] + indptr[1:]])
    self._cg = np.concatenate([self._cg, cg])
    self._cc = np.concatenate([self._cc, cc])

  def pixels(self, ys: np.ndarray, xs: np.ndarray,
             seed: int | None = None, profile: Profile = None
             ) -> np.ndarray:
    """Counts for the predicted pixels (ys, xs); seed: the random stream's
    state (None: from the clock, as SEISM); profile: see ``solve``."""
    sum_p = int(ys.size)
    if sum_p == 0 or self.sum_r == 0:
      return np.array([0, self.sum_r, 0, sum_p], np.float64)
    ys = np.asarray(ys, np.int64)
    xs = np.asarray(xs, np.int64)
    self.prepare(ys, xs)
    h, w = self.shape
    ei, ej, cost, n1, n2 = _problem(ys, xs, h, w, self._row, self._indptr,
                                    self._cg, self._cc, self._gorder,
                                    self.sum_r)
    if ei.size == 0:  # nothing matchable: match.cc returns before drawing
      return np.array([0, self.sum_r, 0, sum_p], np.float64)
    if profile:
      profile("edges")
    if seed is None:  # Random::reseed(0): from the clock
      seed = time.time_ns() // 1000
    k = solve(ei, ej, cost, n1, n2, self.ow, int(seed) & _SEED_MASK, profile)
    return np.array([k, self.sum_r, k, sum_p], np.float64)
