"""Cross-entropy of an unembedding without materialising all the logits.

An exit's loss needs logits [tokens, vocab]. For GPT-2-sized vocabularies
(50,304) and a batch of 16 x 1024 tokens that is 3.3 GB in float32 per exit,
and autodiff keeps it (or the softmax) alive until the backward pass: with
G exits, G times that. `chunked_cross_entropy` walks the sequence in chunks
and keeps only one chunk's logits at a time. Because the loss is a scalar,
its gradient is known up to the scalar cotangent g while the logits are at
hand, so (as Liger-Kernel's fused linear cross-entropy does) the forward pass
of the custom VJP computes it chunk by chunk:

  z = h_c W (f32 accumulation), lse = logsumexp(z), loss += lse - z_y
  dz = softmax(z) - onehot(y),  dh_c = dz W^T,  dW += h_c^T dz

and the backward pass only multiplies dh and dW by g. Memory: O(chunk x
vocab) of logits plus dh [B, T, D] and dW [D, V] instead of O(tokens x vocab)
per exit; compute: the same three unembedding matmuls per exit as autodiff of
the plain loss; no logits ever written to or read from HBM in full. Without
differentiation (evaluation) only the loss is computed.

Each chunk's logits still make a round trip through memory between the matmul
and the softmax: by count (not measured), about 22 bytes per logit in float32
(written once, read by the two reductions and the softmax, dz written and
read by two matmuls).
`logits_dtype="bfloat16"` has the matmul emit bf16 logits (accumulated in
float32, rounded once, as MaxText does by default): about 14 bytes per logit,
the softmax and loss still computed in float32. It rounds every logit to 8
significant bits, so it is for training steps; evaluation keeps float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from familial_jax.config import LOSS_LOGITS_DTYPES

# Elements of one chunk's float32 logits (2^27 x 4 bytes = 512 MiB). Measured
# on an H100 at batch 16 x 1024, vocabulary 50304, G = 4 (benchmarks/results/
# train_step_h100*.json): chunks of 128 positions (this limit) ran 1.25x
# faster than chunks of 32 (the 2^25 limit).
DEFAULT_CHUNK_ELEMENTS = 2 ** 27


def chunk_size(batch: int, length: int, vocab: int, chunk: int = 0) -> int:
  """Sequence positions per chunk: `chunk` if given, else the largest divisor
  of `length` whose logits (batch x chunk x vocab) fit in
  DEFAULT_CHUNK_ELEMENTS (at least 1)."""
  if chunk:
    if length % chunk:
      raise ValueError(f"loss chunk {chunk} does not divide the sequence "
                       f"length {length}; use a divisor of it.")
    return chunk
  limit = max(1, DEFAULT_CHUNK_ELEMENTS // (vocab * batch))
  return max(d for d in range(1, min(limit, length) + 1) if length % d == 0)


def _chunks(x, n):
  """[B, T, ...] -> [n, B, T / n, ...]: chunks along the sequence, so that a
  batch sharded over devices stays sharded the same way in every chunk."""
  b, t = x.shape[:2]
  return jnp.moveaxis(x.reshape(b, n, t // n, *x.shape[2:]), 1, 0)


def _unchunk(x):
  n, b, c = x.shape[:3]
  return jnp.moveaxis(x, 0, 1).reshape(b, n * c, *x.shape[3:])


def _acc(dtype):
  """Accumulation dtype: float32, or float64 for float64 inputs."""
  return jnp.promote_types(dtype, jnp.float32)


def _dot(spec, a, b, acc):
  """einsum with `acc` accumulation. XLA:CPU has no bf16 x bf16 -> f32 dot, so
  there the operands are upcast first (same result, more memory traffic)."""
  if jax.default_backend() == "cpu" and a.dtype != acc:
    a, b = a.astype(acc), b.astype(acc)
  return jnp.einsum(spec, a, b, preferred_element_type=acc)


def _logits(h, w, acc, logits_dtype):
  """h [B, c, D] @ w [D, V] accumulated in `acc`, stored in `logits_dtype`
  (None: `acc`), returned in `acc` for the softmax."""
  if logits_dtype is None:
    return _dot("btd,dv->btv", h, w, acc)
  if jax.default_backend() == "cpu":  # no bf16-output dot: round the result
    z = _dot("btd,dv->btv", h, w, acc).astype(logits_dtype)
  else:
    z = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=logits_dtype)
  return z.astype(acc)


def _forward_chunk(h, w, y, logits_dtype=None):
  """h [B, c, D], w [D, V], y [B, c] -> (loss [B, c], lse [B, c]) in at
  least float32."""
  z = _logits(h, w.astype(h.dtype), _acc(h.dtype), logits_dtype)
  lse = jax.nn.logsumexp(z, axis=-1)
  zy = jnp.take_along_axis(z, y[..., None], axis=-1)[..., 0]
  return lse - zy, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _ce_sum(h, w, y, n_chunks, logits_dtype):
  """Sum of the per-token losses of logits h @ w over n_chunks chunks."""

  def body(total, a):
    return total + _forward_chunk(a[0], w, a[1], logits_dtype)[0].sum(), None

  return jax.lax.scan(body, jnp.zeros((), _acc(h.dtype)),
                      (_chunks(h, n_chunks), _chunks(y, n_chunks)))[0]


def _ce_fwd(h, w, y, n_chunks, logits_dtype):
  """Loss and, in the same pass over each chunk's logits, the gradients of
  the summed loss with respect to h and w (the cotangent is a scalar, so the
  backward pass only rescales them)."""
  wc, acc = w.astype(h.dtype), _acc(h.dtype)

  def body(carry, a):
    total, dw = carry
    h_c, y_c = a
    z = _logits(h_c, wc, acc, logits_dtype)
    lse = jax.nn.logsumexp(z, axis=-1)
    loss = lse - jnp.take_along_axis(z, y_c[..., None], axis=-1)[..., 0]
    dz = (jnp.exp(z - lse[..., None]) -
          jax.nn.one_hot(y_c, z.shape[-1], dtype=acc)).astype(h.dtype)
    dh_c = _dot("btv,dv->btd", dz, wc, acc).astype(h.dtype)
    return (total + loss.sum(), dw + _dot("btd,btv->dv", h_c, dz, acc)), dh_c

  (total, dw), dh = jax.lax.scan(
      body, (jnp.zeros((), acc), jnp.zeros(w.shape, acc)),
      (_chunks(h, n_chunks), _chunks(y, n_chunks)))
  return total, (_unchunk(dh), dw)


def _ce_bwd(n_chunks, logits_dtype, res, g):
  del n_chunks, logits_dtype
  dh, dw = res
  return (dh * g.astype(dh.dtype)), (dw * g).astype(dw.dtype), None


_ce_sum.defvjp(_ce_fwd, _ce_bwd)


def chunked_cross_entropy(h: jax.Array, w: jax.Array, targets: jax.Array,
                          chunk: int = 0,
                          logits_dtype: str = "float32") -> jax.Array:
  """Mean next-token cross-entropy of logits h @ w, chunk by chunk.

  Args:
    h: [B, T, D] features (any float dtype; the matmuls run in it and
      accumulate in float32).
    w: [D, V] unembedding (cast to h's dtype for the matmuls; its gradient
      is returned in w's dtype).
    targets: [B, T] int labels in [0, V).
    chunk: sequence positions per chunk (a divisor of T); 0 picks one
      (`chunk_size`).
    logits_dtype: "float32", or "bfloat16" to store each chunk's logits in
      bf16 between the matmul and the softmax (less memory traffic; every
      logit rounded to bf16). Ignored for float64 features.

  Returns:
    Scalar mean loss (float32, float64 for float64 features), equal to
    `optax.softmax_cross_entropy_with_integer_labels(h @ w, targets).mean()`
    with gradients for h and w.
  """
  if (h.ndim != 3 or h.shape[:-1] != targets.shape or w.ndim != 2
      or w.shape[0] != h.shape[-1]):
    raise ValueError(f"shapes do not match: features {h.shape} ([B, T, D]), "
                     f"unembedding {w.shape} ([D, V]), targets "
                     f"{targets.shape} ([B, T]).")
  if logits_dtype not in LOSS_LOGITS_DTYPES:
    raise ValueError(f"logits_dtype must be one of {LOSS_LOGITS_DTYPES}, "
                     f"got {logits_dtype!r}.")
  b, t = targets.shape
  n = t // chunk_size(b, t, w.shape[1], chunk)
  # Rounding only narrows: float32 logits (or float64 features) store as is.
  store = (None if logits_dtype == "float32" or h.dtype == jnp.float64 else
           logits_dtype)
  return _ce_sum(h, w, targets.astype(jnp.int32), n, store) / (b * t)
