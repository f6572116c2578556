"""Familial decoder-only Transformer: one trunk, G exit heads.

Architecture (pre-norm, as in Llama/Gemma):
  tokens -> embed -> [Block] * n_layers, and after each layer l in
  `config.exit_layers` an exit head: RMSNorm -> unembedding (tied to the input
  embedding by default). Block = x + Attn(RMSNorm(x)); x + SwiGLU(RMSNorm(x)).
  Attention is causal, with rotary positions, through
  `jax.nn.dot_product_attention`.

Parameters carry logical axis names only ("vocab", "embed", "mlp", "heads",
"kv"); `sharding.py` maps them to mesh axes. Activations are annotated with
("batch", "length", ...) constraints, which are no-ops outside a rules context.

Parameter tree (after `flax.linen.unbox`):
  {"embed": {"embedding": [V, D]},
   "blocks_i": {"attn_norm", "attn": {"query","key","value","out"},
                "mlp_norm", "mlp": {"wi_gate","wi_up","wo"}},
   "exits_g": {"norm": {"scale"}, ["unembed": {"kernel": [D, V]}]}}
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from familial_jax.config import ModelConfig

Array = jax.Array


def _dtype(name: str):
  return jnp.dtype(name)


def _init(stddev: float, axes: tuple[str, ...]):
  return nn.with_logical_partitioning(
      nn.initializers.normal(stddev=stddev), axes)


class RMSNorm(nn.Module):
  """RMSNorm computed in float32, output in the compute dtype."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    scale = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        (x.shape[-1],), _dtype(cfg.param_dtype))
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) +
                            cfg.norm_eps)
    return (y * scale.astype(jnp.float32)).astype(_dtype(cfg.dtype))


def check_tokens(tokens, vocab_size: int) -> None:
  """A ValueError unless every token id is in [0, vocab_size): the embedding
  lookup would give NaN logits for ids >= vocab_size and wrap negative ones
  around to the end of the vocabulary."""
  tokens = np.asarray(tokens)  # on the host: no op staged into a trace
  if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
    raise ValueError(f"token ids must be in [0, {vocab_size}) (the model's "
                     f"vocab_size), got ids from {tokens.min()} to "
                     f"{tokens.max()}.")


def rotary(x: Array, positions: Array, theta: float) -> Array:
  """Applies rotary position embeddings (RoPE, rotate-half convention).

  Args:
    x: [B, T, N, H] queries or keys, H even.
    positions: [B, T] integer positions.
    theta: frequency base.

  Returns:
    [B, T, N, H] rotated, same dtype as x.
  """
  half = x.shape[-1] // 2
  freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [H/2]
  angle = positions[..., None].astype(jnp.float32) * freq  # [B, T, H/2]
  sin = jnp.sin(angle)[:, :, None, :]  # [B, T, 1, H/2]
  cos = jnp.cos(angle)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Attention(nn.Module):
  """Causal multi-head self-attention with rotary positions."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array, positions: Array) -> Array:
    cfg = self.config
    d, n, h = cfg.d_model, cfg.n_heads, cfg.head_dim
    dense = lambda name, axes, std: nn.DenseGeneral(
        (n, h), use_bias=False, dtype=_dtype(cfg.dtype),
        param_dtype=_dtype(cfg.param_dtype), kernel_init=_init(std, axes),
        name=name)
    std = d ** -0.5
    q = dense("query", ("embed", "heads", "kv"), std)(x)  # [B, T, N, H]
    k = dense("key", ("embed", "heads", "kv"), std)(x)
    v = dense("value", ("embed", "heads", "kv"), std)(x)
    q = rotary(q, positions, cfg.rope_theta)
    k = rotary(k, positions, cfg.rope_theta)
    # Kept only when "intermediates" is mutable (relay tests compare caches).
    self.sow("intermediates", "cached_key", k)
    self.sow("intermediates", "cached_value", v)
    impl = None if cfg.attention == "auto" else cfg.attention
    y = jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation=impl)  # [B, T, N, H]
    y = nn.with_logical_constraint(y, ("batch", "length", "heads", "kv"))
    out_std = (n * h) ** -0.5 / (2 * cfg.n_layers) ** 0.5
    return nn.DenseGeneral(
        d, axis=(-2, -1), use_bias=False, dtype=_dtype(cfg.dtype),
        param_dtype=_dtype(cfg.param_dtype),
        kernel_init=_init(out_std, ("heads", "kv", "embed")), name="out")(y)


class MLP(nn.Module):
  """SwiGLU feed-forward: wo(silu(x wi_gate) * (x wi_up))."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    dense = lambda feats, name, axes, std: nn.Dense(
        feats, use_bias=False, dtype=_dtype(cfg.dtype),
        param_dtype=_dtype(cfg.param_dtype), kernel_init=_init(std, axes),
        name=name)
    std = cfg.d_model ** -0.5
    gate = dense(cfg.d_ff, "wi_gate", ("embed", "mlp"), std)(x)  # [B, T, F]
    up = dense(cfg.d_ff, "wi_up", ("embed", "mlp"), std)(x)
    hidden = nn.with_logical_constraint(
        nn.silu(gate) * up, ("batch", "length", "mlp"))
    out_std = cfg.d_ff ** -0.5 / (2 * cfg.n_layers) ** 0.5
    return dense(cfg.d_model, "wo", ("mlp", "embed"), out_std)(hidden)


class Block(nn.Module):
  """Pre-norm Transformer block."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array, positions: Array) -> Array:
    x = x + Attention(self.config, name="attn")(
        RMSNorm(self.config, name="attn_norm")(x), positions)
    x = x + MLP(self.config, name="mlp")(RMSNorm(self.config, name="mlp_norm")(x))
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class ExitHead(nn.Module):
  """Exit norm, plus an own unembedding matrix when embeddings are untied."""

  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.norm = RMSNorm(cfg)
    if not cfg.tie_embeddings:
      self.unembed = nn.Dense(
          cfg.vocab_size, use_bias=False, dtype=_dtype(cfg.dtype),
          param_dtype=_dtype(cfg.param_dtype),
          kernel_init=_init(cfg.d_model ** -0.5, ("embed", "vocab")))


class FamilialLM(nn.Module):
  """Decoder-only LM with one exit head per entry of `config.exit_layers`.

  `__call__(tokens)` returns a tuple of G float32 logits arrays [B, T, V], one
  per exit, shallowest first. `features(tokens)` returns the G normalised
  hidden states [B, T, D] that the exits unembed, for losses that never
  materialise all logits at once (see `logits`).
  """

  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.embed = nn.Embed(
        cfg.vocab_size, cfg.d_model, dtype=_dtype(cfg.dtype),
        param_dtype=_dtype(cfg.param_dtype),
        embedding_init=_init(cfg.d_model ** -0.5, ("vocab", "embed")))
    block = Block
    if cfg.remat != "none":
      policy = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable
                if cfg.remat == "dots" else None)
      block = nn.remat(Block, policy=policy)
    self.blocks = [block(cfg) for _ in range(cfg.n_layers)]
    self.exits = [ExitHead(cfg) for _ in range(cfg.granularity)]

  def features(self, tokens: Array) -> tuple[Array, ...]:
    """Normalised hidden state at every exit.

    Args:
      tokens: [B, T] int token ids in [0, vocab_size), T <=
        config.max_seq_len.

    Returns:
      Tuple of G arrays [B, T, D] in the compute dtype.

    Raises:
      ValueError: another shape, T > max_seq_len, or (in an eager call) an
        id outside the vocabulary.
    """
    cfg = self.config
    if tokens.ndim != 2:
      raise ValueError(
          f"tokens must have shape [batch, length], got {tokens.shape}.")
    if tokens.shape[1] > cfg.max_seq_len:
      raise ValueError(
          f"sequence length {tokens.shape[1]} exceeds the model's "
          f"max_seq_len={cfg.max_seq_len}.")
    # Eager calls on this host's arrays; under jit (training) and for arrays
    # spread over hosts nothing is checked or added to the program.
    if not isinstance(tokens, jax.core.Tracer) and getattr(
        tokens, "is_fully_addressable", True):
      check_tokens(tokens, cfg.vocab_size)
    positions = jnp.broadcast_to(
        jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)  # [B, T]
    # Embedding rows have RMS d^-1/2 (so tied logits are O(1) at init); scale
    # by sqrt(d) so that the residual stream starts at unit RMS (as Gemma).
    x = self.embed(tokens) * jnp.asarray(cfg.d_model ** 0.5, _dtype(cfg.dtype))
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))  # [B, T, D]
    outputs, g = [], 0
    for layer, block in enumerate(self.blocks, start=1):
      x = block(x, positions)
      if layer == cfg.exit_layers[g]:
        outputs.append(self.exits[g].norm(x))
        g += 1
        if g == cfg.granularity:
          break
    return tuple(outputs)

  def unembedding(self, params: Any, exit_index: int) -> Array:
    """Exit g's [D, V] unembedding matrix in a parameter tree (the transposed
    input embedding when tied)."""
    if self.config.tie_embeddings:
      return params["embed"]["embedding"].T
    return params[f"exits_{exit_index}"]["unembed"]["kernel"]

  def logits(self, features: Array, exit_index: int) -> Array:
    """Unembeds one exit's features [B, T, D] into float32 logits [B, T, V]."""
    if self.config.tie_embeddings:
      out = self.embed.attend(features)
    else:
      out = self.exits[exit_index].unembed(features)
    return out.astype(jnp.float32)

  def __call__(self, tokens: Array) -> tuple[Array, ...]:
    return tuple(
        self.logits(h, g) for g, h in enumerate(self.features(tokens)))


def init_params(config: ModelConfig, rng: Array, batch: int = 1) -> Any:
  """Initialises an unboxed parameter tree (plain arrays)."""
  tokens = jnp.zeros((batch, min(8, config.max_seq_len)), jnp.int32)
  return nn.unbox(FamilialLM(config).init(rng, tokens))["params"]


def extract_submodel(config: ModelConfig, params: Any,
                     exit_index: int) -> tuple[ModelConfig, Any]:
  """Builds the deployable dense sub-model g of a family.

  Sub-model g is blocks 1..l_g, the embedding and exit g (its norm and, when
  untied, its unembedding). It is an ordinary `FamilialLM` with G = 1 whose
  logits equal exit g's logits of the family.

  Args:
    config: the family's config.
    params: the family's (unboxed) parameters.
    exit_index: 0-based exit index g.

  Returns:
    (sub_config, sub_params).
  """
  sub_config = config.submodel(exit_index)
  sub_params = {"embed": params["embed"],
                "exits_0": params[f"exits_{exit_index}"]}
  for i in range(sub_config.n_layers):
    sub_params[f"blocks_{i}"] = params[f"blocks_{i}"]
  return sub_config, sub_params


def count_params(params: Any) -> int:
  """Number of scalars in a parameter tree."""
  return sum(int(x.size) for x in jax.tree.leaves(params))


__all__ = ["FamilialLM", "Block", "Attention", "MLP", "RMSNorm", "ExitHead",
           "init_params", "extract_submodel", "count_params", "rotary"]
