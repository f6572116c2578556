"""Chunked exit cross-entropy vs the plain full-logits loss (optax)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from familial_jax import losses
from familial_jax import train
from familial_jax.config import ModelConfig
from familial_jax.model import FamilialLM, init_params


def _problem(b=3, t=24, d=16, v=50, dtype=jnp.float32):
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  h = jax.random.normal(k[0], (b, t, d)).astype(dtype)
  w = jax.random.normal(k[1], (d, v)) * 0.3
  y = jax.random.randint(k[2], (b, t), 0, v)
  return h, w, y


def _plain(h, w, y):
  logits = jnp.einsum("btd,dv->btv", h.astype(jnp.float32), w)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@pytest.mark.parametrize("chunk", [0, 1, 4, 24])
def test_values_and_gradients_equal_the_plain_loss(chunk):
  h, w, y = _problem()
  plain, (dh0, dw0) = jax.value_and_grad(_plain, (0, 1))(h, w, y)
  mine, (dh1, dw1) = jax.value_and_grad(
      lambda h, w: losses.chunked_cross_entropy(h, w, y, chunk), (0, 1))(h, w)
  np.testing.assert_allclose(mine, plain, rtol=1e-6)
  np.testing.assert_allclose(dh1, dh0, rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(dw1, dw0, rtol=1e-5, atol=1e-8)


def test_float64_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    h, w, y = _problem(b=2, t=6, d=4, v=7, dtype=jnp.float64)
    w = w.astype(jnp.float64)
    f = lambda w: losses.chunked_cross_entropy(h, w, y, 2)
    g = jax.grad(f)(w)
    eps, i, j = 1e-6, 1, 3
    e = jnp.zeros_like(w).at[i, j].set(eps)
    fd = (f(w + e) - f(w - e)) / (2 * eps)
    np.testing.assert_allclose(g[i, j], fd, rtol=1e-6)


def test_bfloat16_features_stay_close_to_float32():
  h, w, y = _problem(dtype=jnp.bfloat16)
  mine = losses.chunked_cross_entropy(h, w, y, 8)
  np.testing.assert_allclose(mine, _plain(h, w, y), rtol=2e-2)
  dh = jax.grad(lambda h: losses.chunked_cross_entropy(h, w, y, 8))(h)
  assert dh.dtype == jnp.bfloat16


def test_bfloat16_logits_equal_the_loss_of_rounded_logits():
  """logits_dtype="bfloat16" is the plain loss of the bf16-rounded logits,
  and its gradients are the plain gradients up to that rounding."""
  h, w, y = _problem(b=4, t=32, d=16, v=300)
  w = w * 3  # logits up to ~20, where bf16 rounding (up to 0.06) shows
  rounded = lambda h, w: optax.softmax_cross_entropy_with_integer_labels(
      jnp.einsum("btd,dv->btv", h, w).astype(jnp.bfloat16).astype(
          jnp.float32), y).mean()
  mine = lambda h, w: losses.chunked_cross_entropy(h, w, y, 8, "bfloat16")
  np.testing.assert_allclose(mine(h, w), rounded(h, w), rtol=1e-6)
  gap = abs(float(mine(h, w)) - float(_plain(h, w, y)))
  assert 0 < gap < 1e-3 * float(_plain(h, w, y))
  plain = lambda h, w: _plain(h, w, y)
  (dh0, dw0), (dh1, dw1) = (jax.grad(f, (0, 1))(h, w) for f in (plain, mine))
  for a, b in ((dh0, dh1), (dw0, dw1)):
    assert 0 < np.abs(a - b).max() < 0.02 * np.abs(a).max()
  with jax.enable_x64(True):  # float64 features ignore it
    h64, w64 = h.astype(jnp.float64), w.astype(jnp.float64)
    np.testing.assert_array_equal(
        losses.chunked_cross_entropy(h64, w64, y, 8, "bfloat16"),
        losses.chunked_cross_entropy(h64, w64, y, 8))
  with pytest.raises(ValueError, match="logits_dtype must be one of"):
    losses.chunked_cross_entropy(h, w, y, 8, "float16")


def test_chunk_size_rules():
  assert losses.chunk_size(16, 1024, 50304) == 128  # 16 x 128 x 50304 < 2^27
  assert losses.chunk_size(32, 512, 256) == 512  # small vocab: one chunk
  assert losses.chunk_size(4, 7, 10 ** 9) == 1
  with pytest.raises(ValueError, match="does not divide"):
    losses.chunk_size(2, 10, 5, chunk=3)
  with pytest.raises(ValueError, match="shapes do not match"):
    losses.chunked_cross_entropy(jnp.zeros((2, 3, 4)), jnp.zeros((5, 6)),
                                 jnp.zeros((2, 3), jnp.int32))


@pytest.mark.parametrize("tie", [True, False])
def test_exit_losses_equal_optax_on_the_model_logits(tie):
  cfg = ModelConfig(vocab_size=97, d_model=32, n_layers=4, n_heads=4, d_ff=64,
                    max_seq_len=16, exit_layers=(1, 3, 4), tie_embeddings=tie)
  model = FamilialLM(cfg)
  params = init_params(cfg, jax.random.PRNGKey(1))
  batch = jax.random.randint(jax.random.PRNGKey(2), (3, 17), 0, 97)

  def plain(params):
    logits = model.apply({"params": params}, batch[:, :-1])
    return jnp.stack([optax.softmax_cross_entropy_with_integer_labels(
        l, batch[:, 1:]).mean() for l in logits])

  def mine(params):
    return train.exit_losses(params, model, batch, loss_chunk=4)

  # Compiled: op by op, the gradients take 20 s of dispatch on a 2-core CPU.
  np.testing.assert_allclose(jax.jit(mine)(params), jax.jit(plain)(params),
                             rtol=1e-6)
  g0 = jax.jit(jax.grad(lambda p: plain(p).sum()))(params)
  g1 = jax.jit(jax.grad(lambda p: mine(p).sum()))(params)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
