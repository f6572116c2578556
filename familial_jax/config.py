"""Frozen, validated configuration dataclasses.

A `ModelConfig` fully describes one familial model: a decoder-only Transformer
trunk of `n_layers` blocks with G exit heads placed after the layers listed in
`exit_layers` (1-based, strictly increasing, the last one equal to `n_layers`).
G = len(exit_layers); G = 1 is the dense baseline.

Every config validates itself in `__post_init__` and raises `ValueError` naming
the offending field and how to fix it, so that user mistakes never surface as
shape errors from deep inside JAX.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "auto")


def uniform_exits(n_layers: int, granularity: int) -> tuple[int, ...]:
  """Places `granularity` exits uniformly in depth.

  Exit g (1-based) sits after layer round(g * n_layers / G), so the last exit is
  always the final layer. For example `uniform_exits(12, 4) == (3, 6, 9, 12)`.

  Args:
    n_layers: depth of the trunk.
    granularity: G, the number of exits; 1 <= G <= n_layers.

  Returns:
    Strictly increasing tuple of 1-based layer indices.
  """
  if not isinstance(granularity, int) or granularity < 1:
    raise ValueError(
        f"granularity (G) must be an integer >= 1, got {granularity!r}.")
  if not isinstance(n_layers, int) or n_layers < 1:
    raise ValueError(f"n_layers must be an integer >= 1, got {n_layers!r}.")
  if granularity > n_layers:
    raise ValueError(
        f"granularity G={granularity} exceeds n_layers={n_layers}: a trunk can "
        "hold at most one exit per layer; use a deeper model or fewer exits.")
  return tuple(
      int(round(g * n_layers / granularity)) for g in range(1, granularity + 1))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape of a familial model.

  Attributes:
    vocab_size: size of the token vocabulary V.
    d_model: width of the residual stream.
    n_layers: number of Transformer blocks in the trunk.
    n_heads: attention heads; must divide d_model; head_dim must be even
      (rotary embeddings rotate pairs of features).
    d_ff: hidden width of the SwiGLU MLP.
    max_seq_len: longest sequence the model accepts.
    exit_layers: 1-based layers after which an exit head sits. Strictly
      increasing, the last equal to n_layers. Default: a single final exit.
    tie_embeddings: if True every exit's unembedding is the transposed input
      embedding; if False each exit owns a [d_model, vocab] matrix.
    dtype: compute dtype ("float32", "bfloat16", "float16").
    param_dtype: dtype of the stored (master) parameters.
    attention: implementation passed to `jax.nn.dot_product_attention`:
      "xla", "cudnn" (GPU only) or "auto" (let JAX choose).
    rope_theta: base of the rotary position frequencies.
    norm_eps: epsilon of RMSNorm.
  """

  vocab_size: int = 256
  d_model: int = 64
  n_layers: int = 4
  n_heads: int = 4
  d_ff: int = 256
  max_seq_len: int = 128
  exit_layers: tuple[int, ...] | None = None
  tie_embeddings: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention: str = "xla"
  rope_theta: float = 10000.0
  norm_eps: float = 1e-6

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff",
                 "max_seq_len"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"ModelConfig.{name} must be a positive integer, got {value!r}.")
    if self.d_model % self.n_heads:
      raise ValueError(
          f"ModelConfig.n_heads={self.n_heads} does not divide "
          f"d_model={self.d_model}: choose n_heads among the divisors of "
          "d_model.")
    if (self.d_model // self.n_heads) % 2:
      raise ValueError(
          f"ModelConfig head_dim = d_model / n_heads = "
          f"{self.d_model // self.n_heads} is odd; rotary embeddings need an "
          "even head_dim: change n_heads or d_model.")
    if self.exit_layers is None:
      object.__setattr__(self, "exit_layers", (self.n_layers,))
    exits = self.exit_layers
    if isinstance(exits, (str, bytes)) or not isinstance(exits, Sequence):
      raise ValueError(
          "ModelConfig.exit_layers must be a sequence of 1-based layer "
          f"indices, got {exits!r}.")
    exits = tuple(exits)
    if any(isinstance(l, bool) or not isinstance(l, int) for l in exits):
      raise ValueError(
          f"ModelConfig.exit_layers must hold integers, got {exits!r}.")
    if not exits:
      raise ValueError(
          "ModelConfig.exit_layers is empty: G must be >= 1; use "
          f"({self.n_layers},) for a dense model.")
    if any(l < 1 for l in exits):
      raise ValueError(
          f"ModelConfig.exit_layers={exits} holds a layer < 1; exit layers are "
          "1-based (exit after layer 1 is 1).")
    if any(l > self.n_layers for l in exits):
      raise ValueError(
          f"ModelConfig.exit_layers={exits} holds a layer past the last layer "
          f"(n_layers={self.n_layers}); every exit must be <= n_layers.")
    if len(set(exits)) != len(exits):
      raise ValueError(
          f"ModelConfig.exit_layers={exits} repeats a layer; each layer holds "
          "at most one exit.")
    if list(exits) != sorted(exits):
      raise ValueError(
          f"ModelConfig.exit_layers={exits} is not sorted; list exits in "
          f"increasing depth, e.g. {tuple(sorted(exits))}.")
    if exits[-1] != self.n_layers:
      raise ValueError(
          f"ModelConfig.exit_layers={exits}: the last exit must be the final "
          f"layer {self.n_layers}, so that the family contains the full model; "
          f"append {self.n_layers}.")
    object.__setattr__(self, "exit_layers", exits)
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(
            f"ModelConfig.{name}={getattr(self, name)!r} is not one of "
            f"{DTYPES}.")
    if self.attention not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(
          f"ModelConfig.attention={self.attention!r} is not one of "
          f"{ATTENTION_IMPLEMENTATIONS}.")
    if not self.rope_theta > 0:
      raise ValueError(
          f"ModelConfig.rope_theta must be > 0, got {self.rope_theta!r}.")
    if not self.norm_eps > 0:
      raise ValueError(
          f"ModelConfig.norm_eps must be > 0, got {self.norm_eps!r}.")

  @property
  def granularity(self) -> int:
    """G, the number of exits."""
    return len(self.exit_layers)

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  def with_uniform_exits(self, granularity: int) -> "ModelConfig":
    """Returns a copy with `granularity` exits placed uniformly in depth."""
    return dataclasses.replace(
        self, exit_layers=uniform_exits(self.n_layers, granularity))

  def with_exits(self, exit_layers: Sequence[int]) -> "ModelConfig":
    """Returns a copy with an explicit list of 1-based exit layers."""
    return dataclasses.replace(self, exit_layers=tuple(exit_layers))

  def submodel(self, exit_index: int) -> "ModelConfig":
    """Config of the dense sub-model made of blocks 1..l_g and exit g.

    Args:
      exit_index: 0-based index g of the exit (0 <= g < G).
    """
    if not 0 <= exit_index < self.granularity:
      raise ValueError(
          f"exit_index={exit_index} is out of range for a family with "
          f"G={self.granularity} exits (valid: 0..{self.granularity - 1}).")
    depth = self.exit_layers[exit_index]
    return dataclasses.replace(self, n_layers=depth, exit_layers=(depth,))
