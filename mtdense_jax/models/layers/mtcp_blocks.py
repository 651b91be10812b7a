"""MT-CP's fusion and refinement blocks (Fontana et al., WACV 2025), NHWC.

Port of Klodivio355/MT-CP@08c068e ``models/utils.py`` (facts:
``../shared/notes/methods.md`` a.1 items 4-5):

* :class:`CBAM`: channel gate (avg- and max-pooled through one MLP with
  hidden C // 16, summed, sigmoid), then a spatial gate on the channel-gated
  map ([max, mean] over channels -> 7x7 conv, no bias -> BatchNorm ->
  sigmoid). No ReLU anywhere.
* :class:`CFM` (the paper's Coherence Fusion Module, ``GAAF_module2``): the
  task's own embedding s = BN(CBAM(x)); the other tasks' embeddings, each
  gated by its own 1x1 conv + sigmoid, are concatenated and fused by a
  1x1 conv + ReLU into f; two CBAM + BN + ReLU branches of f give d1 and d2;
  out_i = sum_j softmax_j(d1_i . d2_j) s_j (no 1/sqrt(d), no residual), then
  BN(CBAM(out)). The reference's unused ``conv2``/``conv3`` are not built.
* :class:`SPF` (the paper's Spatial Refinement Module) and
  :class:`TraceBack`, the chain of SPFs that walks a task's decoder stages
  back coarse to fine, feeding each step's *back* output (not its pred) on.

The CFM affinity is hw x hw (3.7e8 entries per image at NYUD's 120x160
feature map); :func:`affinity_attend` computes it in query chunks, each
chunk rematerialised in the backward pass, so memory grows with
``chunk * hw`` instead of ``hw ** 2`` (benchmarks/mtcp_memory.py). The
reference generalises here from 3 tasks to any number >= 2: one gate per
other task, and the fuse conv is ``(T-1) * dim`` wide.
"""

from __future__ import annotations

from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from mtdense_jax.models.layers import common

Dtype = Any
ATTENTION = ("chunked", "direct")


class ChannelGate(nnx.Module):
  """x * sigmoid(mlp(avgpool x) + mlp(maxpool x)), per channel.

  ``mlp_1``/``mlp_3`` are the reference ``ChannelGate.mlp.1``/``.3``; the
  hidden width C // 16 rounds down (at least 1, where the reference would
  build an empty layer).
  """

  def __init__(self, channels: int, *, rngs: nnx.Rngs, dtype: Dtype,
               reduction: int = 16):
    hidden = max(channels // reduction, 1)
    self.mlp_1 = nnx.Linear(channels, hidden, dtype=dtype, rngs=rngs)
    self.mlp_3 = nnx.Linear(hidden, channels, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    def mlp(v):
      return self.mlp_3(jax.nn.relu(self.mlp_1(v)))
    gate = mlp(jnp.mean(x, axis=(1, 2))) + mlp(jnp.max(x, axis=(1, 2)))
    return x * jax.nn.sigmoid(gate)[:, None, None, :]


class SpatialGate(nnx.Module):
  """x * sigmoid(BN(conv7x7([max_c x, mean_c x]))), per pixel."""

  def __init__(self, *, rngs: nnx.Rngs, dtype: Dtype, kernel: int = 7):
    self.conv = common.conv(2, 1, kernel, padding=(kernel - 1) // 2,
                            bias=False, dtype=dtype, rngs=rngs)
    self.bn = common.batch_norm(1, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    pooled = jnp.concatenate([jnp.max(x, axis=-1, keepdims=True),
                              jnp.mean(x, axis=-1, keepdims=True)], axis=-1)
    return x * jax.nn.sigmoid(self.bn(self.conv(pooled)))


class CBAM(nnx.Module):
  """Channel gate, then the spatial gate on the channel-gated map."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs, dtype: Dtype):
    self.channel_gate = ChannelGate(channels, rngs=rngs, dtype=dtype)
    self.spatial_gate = SpatialGate(rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.spatial_gate(self.channel_gate(x))


class CBAMNorm(nnx.Module):
  """BN(CBAM(x)), with an optional ReLU (the CFM's four branches)."""

  def __init__(self, channels: int, *, relu: bool, rngs: nnx.Rngs,
               dtype: Dtype):
    self.cbam = CBAM(channels, rngs=rngs, dtype=dtype)
    self.norm = common.batch_norm(channels, dtype=dtype, rngs=rngs)
    self.relu = relu

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.norm(self.cbam(x))
    return jax.nn.relu(y) if self.relu else y


def affinity_direct(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """softmax_j(q_i . k_j) v_j with the (n, n) affinity materialised.

  q, k: (B, n, C); v: (B, n, D). Logits and softmax run in float32.
  """
  logits = jnp.einsum("bic,bjc->bij", q, k,
                      preferred_element_type=jnp.float32)
  attn = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("bij,bjd->bid", attn.astype(v.dtype), v,
                    preferred_element_type=jnp.float32).astype(v.dtype)


def affinity_attend(q: jax.Array, k: jax.Array, v: jax.Array, *,
                    chunk: int = 1024) -> jax.Array:
  """:func:`affinity_direct` over query chunks of ``chunk`` rows.

  Each chunk sees every key, so its softmax is exact; the chunk body is
  rematerialised, so neither the forward nor the backward pass keeps more
  than one (chunk, n) block of logits. Queries are zero-padded to a
  multiple of the chunk and the padding rows dropped. (Why not
  ``jax.nn.dot_product_attention``: its XLA path materialises the whole
  (n, n) logits, and the fused GPU kernels do not take float32 or a value
  width (256) other than the query width (512).)
  """
  b, n, _ = q.shape
  if n <= chunk:
    return affinity_direct(q, k, v)
  pad = (-n) % chunk
  qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0)))
  qc = qp.reshape(b, (n + pad) // chunk, chunk, -1).swapaxes(0, 1)
  body = jax.checkpoint(lambda qi: affinity_direct(qi, k, v))
  out = jax.lax.map(body, qc)                       # (nc, B, chunk, D)
  return out.swapaxes(0, 1).reshape(b, n + pad, -1)[:, :n]


class CFM(nnx.Module):
  """Coherence Fusion Module (reference ``GAAF_module2``).

  ``__call__(x, others)``: x (B, h, w, dim) is this task's embedding,
  ``others`` the other tasks' embeddings in task order (the reference
  concatenates them in that order: for semseg [depth, normals], for
  depth [semseg, normals], for normals [semseg, depth]), so ``others[0]``
  meets ``gates[0]`` (the reference ``gate1``).
  """

  def __init__(self, dim: int, num_others: int, *, rngs: nnx.Rngs,
               dtype: Dtype, attention: str = "chunked", chunk: int = 1024):
    if attention not in ATTENTION:
      raise ValueError(f"MT-CP cfm_attention={attention!r}; one of "
                       f"{ATTENTION}")
    if num_others < 1:
      raise ValueError("The MT-CP CFM needs at least one other task.")
    wide = num_others * dim
    kw = dict(rngs=rngs, dtype=dtype)
    self.attention, self.chunk = attention, int(chunk)
    self.sem = CBAMNorm(dim, relu=False, **kw)        # cbam_sem(+_norm)
    self.gates = nnx.List([common.conv(dim, dim, 1, **kw)
                           for _ in range(num_others)])  # gate1, gate2, ...
    self.conv1 = common.conv(wide, wide, 1, **kw)
    self.dep = CBAMNorm(wide, relu=True, **kw)        # cbam_dep(+_norm)
    self.dep2 = CBAMNorm(wide, relu=True, **kw)       # cbam_dep2(+_norm)
    self.out = CBAMNorm(dim, relu=False, **kw)        # shared_dep2(+_norm)

  def __call__(self, x: jax.Array, others: Sequence[jax.Array]) -> jax.Array:
    if len(others) != len(self.gates):
      raise ValueError(f"CFM built for {len(self.gates)} other tasks, "
                       f"got {len(others)}")
    b, h, w, c = x.shape
    s = self.sem(x)
    gated = [a * jax.nn.sigmoid(g(a)) for g, a in zip(self.gates, others)]
    f = jax.nn.relu(self.conv1(jnp.concatenate(gated, axis=-1)))
    d1, d2 = self.dep(f), self.dep2(f)
    flat = [y.reshape(b, h * w, y.shape[-1]) for y in (d1, d2, s)]
    if self.attention == "direct":
      o = affinity_direct(*flat)
    else:
      o = affinity_attend(*flat, chunk=self.chunk)
    return self.out(o.reshape(b, h, w, c))


class SPF(nnx.Module):
  """pred, back -> (pred' (out_dim ch), back' (back_dim ch)) at back's size.

  CBAM on each input at its own size, pred resized (bilinear,
  align_corners=False, no antialias) to back's size, concatenated [p, b],
  then two 1x1 conv + BN + ReLU branches of that one concat.
  """

  def __init__(self, pred_dim: int, back_dim: int, out_dim: int, *,
               rngs: nnx.Rngs, dtype: Dtype):
    kw = dict(rngs=rngs, dtype=dtype)
    self.sem_cbam = CBAM(pred_dim, **kw)
    self.dep_cbam = CBAM(back_dim, **kw)
    self.sem_conv = common.conv(pred_dim + back_dim, out_dim, 1, **kw)
    self.b1 = common.batch_norm(out_dim, **kw)
    self.dep_conv = common.conv(pred_dim + back_dim, back_dim, 1, **kw)
    self.b2 = common.batch_norm(back_dim, **kw)

  def __call__(self, pred: jax.Array,
               back: jax.Array) -> tuple[jax.Array, jax.Array]:
    p = common.resize_bilinear(self.sem_cbam(pred), back.shape[1:3])
    cat = jnp.concatenate([p, self.dep_cbam(back)], axis=-1)
    return (jax.nn.relu(self.b1(self.sem_conv(cat))),
            jax.nn.relu(self.b2(self.dep_conv(cat))))


class TraceBack(nnx.Module):
  """The SPF chain over a task's stages, coarsest first.

  ``stage_dims`` fine to coarse (as the decoder produces them); step 0 is
  SPF(pred_dim, coarsest), step i > 0 SPF(stage i-1's dim, stage i's dim)
  walking to the finest. Returns every step's pred (coarsest first: the
  reference ``pred_list``; the last is the final head's input).
  """

  def __init__(self, pred_dim: int, stage_dims: Sequence[int], out_dim: int,
               *, rngs: nnx.Rngs, dtype: Dtype):
    coarse_first = list(stage_dims)[::-1]
    ins = [pred_dim] + coarse_first[:-1]
    self.spfs = nnx.List([SPF(i, o, out_dim, rngs=rngs, dtype=dtype)
                          for i, o in zip(ins, coarse_first)])

  def __call__(self, stages: Sequence[jax.Array],
               initial_pred: jax.Array) -> list[jax.Array]:
    """``stages`` fine to coarse; ``initial_pred`` the CFM output."""
    x, preds = initial_pred, []
    for spf, back in zip(self.spfs, list(stages)[::-1]):
      pred, x = spf(x, back)
      preds.append(pred)
    return preds
