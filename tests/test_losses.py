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

  np.testing.assert_allclose(mine(params), plain(params), rtol=1e-6)
  g0 = jax.grad(lambda p: plain(p).sum())(params)
  g1 = jax.grad(lambda p: mine(p).sum())(params)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
