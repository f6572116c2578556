"""Forward pass: numpy reference, sub-model extraction, causality."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from familial_jax.config import ModelConfig
from familial_jax.model import FamilialLM, extract_submodel, init_params

CFG = ModelConfig(vocab_size=97, d_model=32, n_layers=4, n_heads=4, d_ff=80,
                  max_seq_len=16)


def _tokens(cfg, batch=2, length=12, seed=1):
  return jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 0,
                            cfg.vocab_size)


def _numpy_forward(cfg, params, tokens):
  """Independent float64 numpy implementation of a dense LM's last exit."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  tokens = np.asarray(tokens)
  t = tokens.shape[1]

  def rms(x, scale):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.norm_eps) * scale

  def rope(x):  # [B, T, N, H]
    half = x.shape[-1] // 2
    freq = cfg.rope_theta ** (-np.arange(half) / half)
    ang = np.arange(t)[:, None] * freq  # [T, H/2]
    sin, cos = np.sin(ang)[None, :, None], np.cos(ang)[None, :, None]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

  emb = p["embed"]["embedding"]
  x = emb[tokens] * np.sqrt(cfg.d_model)
  mask = np.tril(np.ones((t, t), bool))
  for i in range(cfg.n_layers):
    b = p[f"blocks_{i}"]
    h = rms(x, b["attn_norm"]["scale"])
    q = rope(np.einsum("btd,dnh->btnh", h, b["attn"]["query"]["kernel"]))
    k = rope(np.einsum("btd,dnh->btnh", h, b["attn"]["key"]["kernel"]))
    v = np.einsum("btd,dnh->btnh", h, b["attn"]["value"]["kernel"])
    s = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(cfg.head_dim)
    s = np.where(mask, s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    y = np.einsum("bnqk,bknh->bqnh", w, v)
    x = x + np.einsum("btnh,nhd->btd", y, b["attn"]["out"]["kernel"])
    h = rms(x, b["mlp_norm"]["scale"])
    gate = h @ b["mlp"]["wi_gate"]["kernel"]
    up = h @ b["mlp"]["wi_up"]["kernel"]
    x = x + (gate / (1 + np.exp(-gate)) * up) @ b["mlp"]["wo"]["kernel"]
  h = rms(x, p["exits_0"]["norm"]["scale"])
  return h @ emb.T


def test_dense_model_matches_numpy_reference():
  """G = 1 is a plain dense LM: its logits match an independent numpy one."""
  params = init_params(CFG, jax.random.PRNGKey(0))
  tokens = _tokens(CFG)
  (logits,) = FamilialLM(CFG).apply({"params": params}, tokens)
  assert logits.shape == (2, 12, CFG.vocab_size)
  expected = _numpy_forward(CFG, params, tokens)
  np.testing.assert_allclose(logits, expected, rtol=2e-4, atol=2e-4)
  assert not np.allclose(logits, 0, atol=1e-2)  # the comparison is not vacuous


@pytest.mark.parametrize("exits, tied", [((1, 3, 4), True), ((2, 4), False),
                                         ((1, 2, 3, 4), True)])
def test_exit_equals_extracted_submodel(exits, tied):
  cfg = ModelConfig(vocab_size=97, d_model=32, n_layers=4, n_heads=4, d_ff=80,
                    max_seq_len=16, exit_layers=exits, tie_embeddings=tied)
  params = init_params(cfg, jax.random.PRNGKey(3))
  tokens = _tokens(cfg)
  family = jax.jit(lambda p, x: FamilialLM(cfg).apply({"params": p}, x))(
      params, tokens)
  assert len(family) == cfg.granularity
  for g in range(cfg.granularity):
    sub_cfg, sub_params = extract_submodel(cfg, params, g)
    assert sub_cfg.n_layers == exits[g] and sub_cfg.granularity == 1
    (sub_logits,) = jax.jit(
        lambda p, x, c=sub_cfg: FamilialLM(c).apply({"params": p}, x))(
            sub_params, tokens)
    np.testing.assert_array_equal(family[g], sub_logits)
  # Exits differ from one another (the test would catch a wrong index).
  assert not np.allclose(family[0], family[-1], atol=1e-3)


def test_extracted_submodel_matches_numpy_reference():
  cfg = CFG.with_exits((2, 4))
  params = init_params(cfg, jax.random.PRNGKey(4))
  sub_cfg, sub_params = extract_submodel(cfg, params, 0)
  tokens = _tokens(cfg)
  family = FamilialLM(cfg).apply({"params": params}, tokens)
  np.testing.assert_allclose(family[0], _numpy_forward(sub_cfg, sub_params,
                                                       tokens),
                             rtol=2e-4, atol=2e-4)


def test_causality():
  cfg = CFG.with_uniform_exits(2)
  params = init_params(cfg, jax.random.PRNGKey(0))
  tokens = _tokens(cfg, batch=1, length=16)
  apply = jax.jit(lambda x: FamilialLM(cfg).apply({"params": params}, x))
  base = apply(tokens)
  for t in (0, 7, 14):
    changed = tokens.at[0, t + 1].set((tokens[0, t + 1] + 1) % cfg.vocab_size)
    out = apply(changed)
    for g in range(cfg.granularity):
      np.testing.assert_array_equal(out[g][:, :t + 1], base[g][:, :t + 1])
      assert not np.allclose(out[g][:, t + 1:], base[g][:, t + 1:])


def test_too_long_sequence_is_a_clear_error():
  params = init_params(CFG, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="max_seq_len=16"):
    FamilialLM(CFG).apply({"params": params}, jnp.zeros((1, 17), jnp.int32))


def test_token_ids_outside_the_vocabulary_are_a_clear_error():
  """Before: ids >= vocab_size gave NaN logits and -1 was read as the last
  id. An eager call checks the ids; under jit (training) nothing is added
  to the program."""
  params = init_params(CFG, jax.random.PRNGKey(0))
  model = FamilialLM(CFG)
  for bad in (CFG.vocab_size, -1):
    tokens = jnp.zeros((2, 8), jnp.int32).at[1, 3].set(bad)
    with pytest.raises(ValueError, match=rf"\[0, {CFG.vocab_size}\)"):
      model.apply({"params": params}, tokens)
    with pytest.raises(ValueError, match="token ids must be in"):
      model.apply({"params": params}, np.asarray(tokens))
  edge = jnp.full((1, 8), CFG.vocab_size - 1, jnp.int32)
  eager = model.apply({"params": params}, edge)
  jitted = jax.jit(lambda x: model.apply({"params": params}, x))(edge)
  for a, b in zip(eager, jitted):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_params_carry_logical_axes():
  boxed = FamilialLM(CFG).init(jax.random.PRNGKey(0),
                               jnp.zeros((1, 4), jnp.int32))["params"]
  specs = jax.tree.map(lambda x: x.names, boxed,
                       is_leaf=lambda x: hasattr(x, "names"))
  assert specs["embed"]["embedding"] == ("vocab", "embed")
  assert specs["blocks_0"]["mlp"]["wi_gate"]["kernel"] == ("embed", "mlp")
  assert specs["blocks_0"]["attn"]["query"]["kernel"] == ("embed", "heads", "kv")
  assert specs["blocks_0"]["attn"]["out"]["kernel"] == ("heads", "kv", "embed")
