"""Parameter and FLOP accounting for familial models (plain integer maths).

Conventions (stated once, used everywhere):
- A multiply-add is 2 FLOPs; a [m, k] x [k, n] matmul costs 2*m*k*n.
- Only matmuls are counted (norms, rotary, softmax and activations are
  O(d) per token, well under 1% at the sizes we train); XLA's own count,
  which includes them, agrees within a few percent (tests/test_flops.py).
- Causal attention is counted as half of the full T x T score matrix, as
  MaxText does: per token and layer, QK^T and AV cost 2 * T * d together
  (the full matrix would be 4 * T * d). Pass `causal=False` for the count of
  an implementation that computes and masks the full matrix.
- Every exit head is counted: each costs 2 * d_model * vocab FLOPs per token
  forward, whether its unembedding is tied or not.
- Training FLOPs = 3 x forward (the backward pass costs twice the forward).
  For the parameters alone this is the familiar 6 * N per token.

Parameter counts (tied embeddings unless said):
- N   = non-embedding parameters of the family: all blocks + all G exit norms.
- N_g = non-embedding parameters of sub-model g: blocks 1..l_g + exit norm g.
- total = N + vocab * d_model (the embedding) + G * d_model * vocab if untied.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from familial_jax.config import ModelConfig, require_ints, require_number


def block_params(cfg: ModelConfig) -> int:
  """Parameters of one Transformer block (attention, SwiGLU MLP, 2 norms)."""
  d = cfg.d_model
  attention = 4 * d * cfg.n_heads * cfg.head_dim  # q, k, v, out
  mlp = 3 * d * cfg.d_ff  # gate, up, down
  return attention + mlp + 2 * d


def exit_params(cfg: ModelConfig) -> int:
  """Non-embedding parameters of one exit head (its RMSNorm scale)."""
  return cfg.d_model


def embedding_params(cfg: ModelConfig) -> int:
  """Embedding parameters of the family: the input table plus, when untied,
  one unembedding matrix per exit."""
  per_matrix = cfg.vocab_size * cfg.d_model
  return per_matrix * (1 if cfg.tie_embeddings else 1 + cfg.granularity)


def non_embedding_params(cfg: ModelConfig) -> int:
  """N: every block and every exit norm of the family."""
  return cfg.n_layers * block_params(cfg) + cfg.granularity * exit_params(cfg)


def exit_non_embedding_params(cfg: ModelConfig) -> tuple[int, ...]:
  """N_g for g = 1..G: blocks 1..l_g plus exit norm g."""
  return tuple(l * block_params(cfg) + exit_params(cfg)
               for l in cfg.exit_layers)


def total_params(cfg: ModelConfig) -> int:
  """Every parameter of the family, embeddings included."""
  return non_embedding_params(cfg) + embedding_params(cfg)


@dataclasses.dataclass(frozen=True)
class FlopsPerToken:
  """Forward FLOPs per token, by component, for a whole family.

  Attributes:
    attention_projections: q, k, v and output projections, all layers.
    attention_scores: QK^T and AV, all layers (causal: half the matrix).
    mlp: SwiGLU MLPs, all layers.
    exits: one entry per exit head (2 * d_model * vocab each).
  """

  attention_projections: int
  attention_scores: int
  mlp: int
  exits: tuple[int, ...]

  @property
  def trunk(self) -> int:
    return self.attention_projections + self.attention_scores + self.mlp

  @property
  def forward(self) -> int:
    return self.trunk + sum(self.exits)

  @property
  def train(self) -> int:
    """Forward + backward: 3 x forward."""
    return 3 * self.forward


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None,
                    causal: bool = True) -> FlopsPerToken:
  """Forward FLOPs per token of the family, per component.

  Args:
    cfg: model config.
    seq_len: training sequence length T (default `cfg.max_seq_len`); the
      attention score cost grows linearly with it.
    causal: count half of the T x T score matrix (True, the default) or all
      of it (False).

  Returns:
    A `FlopsPerToken`; `.forward` and `.train` give the totals.
  """
  t = cfg.max_seq_len if seq_len is None else seq_len
  d_attn = cfg.n_heads * cfg.head_dim
  scores = 4 * t * d_attn * cfg.n_layers  # full matrix: QK^T + AV
  return FlopsPerToken(
      attention_projections=2 * 4 * cfg.d_model * d_attn * cfg.n_layers,
      attention_scores=scores // 2 if causal else scores,
      mlp=2 * 3 * cfg.d_model * cfg.d_ff * cfg.n_layers,
      exits=(2 * cfg.d_model * cfg.vocab_size,) * cfg.granularity)


def submodel_flops_per_token(cfg: ModelConfig, exit_index: int,
                             seq_len: int | None = None,
                             causal: bool = True) -> FlopsPerToken:
  """Forward FLOPs per token of the dense sub-model ending at exit g."""
  return flops_per_token(cfg.submodel(exit_index), seq_len, causal)


def training_flops(cfg: ModelConfig, tokens: float,
                   seq_len: int | None = None) -> float:
  """C = D * train FLOPs per token (forward + backward, every exit)."""
  return float(tokens) * flops_per_token(cfg, seq_len).train


def mfu(tokens_per_second: float, train_flops_per_token: float,
        peak_flops_per_second: float) -> float:
  """Model FLOP utilisation (PaLM, appendix B; nanoGPT's estimate_mfu).

  MFU = tokens/s * training FLOPs per token / peak FLOP/s, counting only the
  model's FLOPs (no rematerialisation), with every exit head included.
  """
  if peak_flops_per_second <= 0:
    raise ValueError(
        f"peak_flops_per_second must be > 0, got {peak_flops_per_second}.")
  return tokens_per_second * train_flops_per_token / peak_flops_per_second


def positive(name: str, value) -> np.ndarray:
  """`value` (N, D, C, ...) as float64, or a ValueError unless all of it is
  finite and > 0."""
  try:
    array = np.asarray(value, np.float64)
  except (TypeError, ValueError):
    array = np.array([np.nan])
  if array.size == 0 or not np.all(np.isfinite(array) & (array > 0)):
    raise ValueError(f"{name} must be finite and > 0, got {value!r}.")
  return array


def check_granularity(granularity) -> None:
  """A ValueError unless G is a whole number >= 1 (4, 4.0 or np.int64(4))."""
  try:
    g = float(granularity)
  except (TypeError, ValueError):
    g = 0.0
  if not (g >= 1 and g.is_integer()):
    raise ValueError(f"granularity must be a whole number >= 1, got "
                     f"{granularity!r}.")


@dataclasses.dataclass(frozen=True)
class ShapeLadder:
  """Model shapes of fixed aspect ratio, for IsoFLOP sweeps and law analysis.

  A rung is set by its depth: d_model = aspect_ratio * n_layers (rounded to a
  multiple of head_dim), d_ff = ff_ratio * d_model (rounded to a multiple of
  8), n_heads = d_model / head_dim, exits uniform in depth. The continuous
  versions (`non_embedding_params`, `train_flops_per_token`) let the analysis
  move N smoothly along the same ladder, with the exact FLOP accounting above
  (every exit head and the attention scores counted), not 6ND.

  Attributes:
    vocab_size: V.
    seq_len: training sequence length T.
    aspect_ratio: d_model / n_layers.
    ff_ratio: d_ff / d_model.
    head_dim: width of one attention head.
  """

  vocab_size: int = 256
  seq_len: int = 256
  aspect_ratio: float = 32.0
  ff_ratio: float = 8.0 / 3.0
  head_dim: int = 32

  def __post_init__(self):
    require_ints(self, ("vocab_size", "seq_len", "head_dim"), 1)
    for name in ("aspect_ratio", "ff_ratio"):
      require_number(self, name, lambda v: 0 < v < math.inf,
                     "a finite number > 0")

  def config(self, n_layers: int, granularity: int = 1,
             **overrides) -> ModelConfig:
    """The discrete rung with `n_layers` blocks and G uniform exits."""
    d = max(self.head_dim, int(round(self.aspect_ratio * n_layers /
                                     self.head_dim)) * self.head_dim)
    d_ff = max(8, int(round(self.ff_ratio * d / 8)) * 8)
    cfg = ModelConfig(vocab_size=self.vocab_size, d_model=d, n_layers=n_layers,
                      n_heads=d // self.head_dim, d_ff=d_ff,
                      max_seq_len=self.seq_len, **overrides)
    return cfg.with_uniform_exits(granularity)

  def _block(self, n_layers):
    d = self.aspect_ratio * n_layers
    return d, (4 + 3 * self.ff_ratio) * d * d + 2 * d

  def non_embedding_params(self, n_layers, granularity=1):
    """Continuous N(n_layers) along the ladder."""
    d, block = self._block(n_layers)
    return n_layers * block + granularity * d

  def layers_for(self, n_params, granularity=1):
    """Continuous depth with N(depth) = n_params (inverse of the above).

    Raises:
      ValueError: N not finite and > 0, or G not a whole number >= 1.
    """
    check_granularity(granularity)
    n_params = positive("n_params", n_params)
    # N(L) = k3 L^3 + k2 L^2 + k1 L, all k > 0: increasing and convex for
    # L > 0, so Newton's method from the overestimate (N / k3)^(1/3) falls
    # monotonically onto the root (quadratically, a handful of steps).
    r = self.aspect_ratio
    k3, k2, k1 = (4 + 3 * self.ff_ratio) * r * r, 2 * r, granularity * r
    depth = np.cbrt(n_params / k3)
    for _ in range(100):
      step = ((((k3 * depth + k2) * depth + k1) * depth - n_params) /
              ((3 * k3 * depth + 2 * k2) * depth + k1))
      depth = depth - step
      if np.all(np.abs(step) <= 1e-14 * depth):
        break
    return depth

  def train_flops_per_token(self, n_params, granularity=1):
    """Training FLOPs per token (3 x forward, causal attention, G exits) of
    the continuous rung with N = n_params."""
    n_layers = self.layers_for(n_params, granularity)
    d, _ = self._block(n_layers)
    matmul = 2 * (4 + 3 * self.ff_ratio) * d * d * n_layers
    scores = 2 * self.seq_len * d * n_layers
    exits = 2 * granularity * d * self.vocab_size
    return 3 * (matmul + scores + exits)

  def exit_params(self, n_params, granularity):
    """Continuous N_g (g = 1..G) of uniformly placed exits: g/G of the blocks
    plus one exit norm. Returns [..., G]."""
    n_layers = self.layers_for(n_params, granularity)
    d, block = self._block(n_layers)
    g = np.arange(1, granularity + 1)
    return (np.asarray(n_layers * block)[..., None] * g / granularity +
            np.asarray(d)[..., None])
