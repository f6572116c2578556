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
import math
import numbers
import operator
import sys
from typing import Callable, Sequence

DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "auto")
REMAT_POLICIES = ("none", "block", "dots")
# Storage dtypes of the exit loss' logits (`losses.chunked_cross_entropy`).
LOSS_LOGITS_DTYPES = ("float32", "bfloat16")


def require_ints(config, names, minimum: int) -> None:
  """Raises ValueError naming the first field that is not an int >= minimum."""
  for name in names:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
      raise ValueError(f"{type(config).__name__}.{name} must be {what}, got "
                       f"{value!r}.")


def require_number(config, name: str, ok: Callable[[float], bool],
                   what: str) -> None:
  """Raises ValueError unless config.`name` is a real number (not a bool or
  NaN) for which ok(value) holds; `what` says which ("in [0, 1]")."""
  value = getattr(config, name)
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or math.isnan(value) or not ok(value)):
    raise ValueError(f"{type(config).__name__}.{name} must be {what}, got "
                     f"{value!r}.")


def as_index(value) -> int | None:
  """`value` as an int if it is an integer (int or numpy integer, not a
  bool), else None."""
  if isinstance(value, bool):
    return None
  try:
    return operator.index(value)
  except TypeError:
    return None


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
    remat: activation rematerialisation of each block in the backward pass:
      "none" (keep every activation), "block" (keep only block inputs) or
      "dots" (keep matmul outputs, recompute the cheap elementwise ops).
      Changes memory and speed, never the numbers.
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
  remat: str = "none"

  def __post_init__(self):
    require_ints(self, ("vocab_size", "d_model", "n_layers", "n_heads",
                        "d_ff", "max_seq_len"), minimum=1)
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
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"ModelConfig.remat={self.remat!r} is not one of "
                       f"{REMAT_POLICIES}.")
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
    index = as_index(exit_index)
    if index is None or not 0 <= index < self.granularity:
      raise ValueError(
          f"exit_index={exit_index!r} is not an exit of a family with "
          f"G={self.granularity} exits (valid: 0..{self.granularity - 1}).")
    depth = self.exit_layers[index]
    return dataclasses.replace(self, n_layers=depth, exit_layers=(depth,))


DATA_SOURCES = ("default", "files", "tfds")
EVAL_SAMPLES = ("spread", "first")  # validation windows: data.validation_windows


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the text comes from and how it is split.

  Attributes:
    source: "default" (the offline corpus), "files" (a glob) or "tfds".
    path: glob for "files"; Documentation directory override for "default".
    tfds_name: TFDS dataset name for "tfds".
    tfds_split: TFDS split.
    tfds_data_dir: TFDS data_dir (local or gs://).
    text_key: TFDS feature holding the text.
    val_fraction: fraction of documents held out for validation.
    eval_sample: which `eval_windows` windows of the held-out stream are the
      validation set: "spread" (evenly over all of it) or "first" (its first
      windows: narrow, one or two documents for small sets; what every config
      written before this field existed used, so a config dict without it
      reads as "first", see `DataConfig.from_dict`).
  """

  source: str = "default"
  path: str | None = None
  tfds_name: str | None = None
  tfds_split: str = "train"
  tfds_data_dir: str | None = None
  text_key: str = "text"
  val_fraction: float = 0.02
  eval_sample: str = "spread"

  @classmethod
  def from_dict(cls, d: dict) -> "DataConfig":
    """From a dict such as a saved config's; one that has no `eval_sample`
    was written before the field existed and measured the first windows."""
    return cls(**{"eval_sample": "first", **d})

  def __post_init__(self):
    if self.source not in DATA_SOURCES:
      raise ValueError(f"DataConfig.source={self.source!r} is not one of "
                       f"{DATA_SOURCES}.")
    if self.source == "files" and not self.path:
      raise ValueError("DataConfig.path (a glob) is required for the 'files' "
                       "source.")
    if self.source == "tfds" and not self.tfds_name:
      raise ValueError("DataConfig.tfds_name is required for the 'tfds' "
                       "source.")
    if not 0 < self.val_fraction < 1:
      raise ValueError(f"DataConfig.val_fraction must be in (0, 1), got "
                       f"{self.val_fraction}.")
    if self.eval_sample not in EVAL_SAMPLES:
      raise ValueError(f"DataConfig.eval_sample={self.eval_sample!r} is not "
                       f"one of {EVAL_SAMPLES}.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One training run.

  Attributes:
    model: the familial model.
    data: the text source.
    seq_len: training sequence length (<= model.max_seq_len).
    batch_size: global batch in sequences; divisible by data * fsdp.
    steps: optimizer steps; D = steps * batch_size * seq_len tokens.
    learning_rate: peak AdamW learning rate.
    warmup_steps: linear warmup; then cosine decay to
      min_lr_ratio * learning_rate at the last step (the run's own length).
    min_lr_ratio: final learning rate over peak.
    weight_decay: AdamW decoupled weight decay.
    b1, b2: AdamW betas.
    grad_clip: global-norm gradient clipping.
    exit_weights: weight of each exit in the family loss; default 1/G each.
    seed: seeds initialisation and data order.
    mesh_shape: (data, fsdp, tensor); -1 takes the remaining devices.
    eval_every: steps between validation passes (0: only at the end).
    eval_windows: validation windows (of seq_len + 1 tokens) evaluated.
    log_every: steps between progress lines.
    checkpoint_every: steps between checkpoints (0: only at the end).
    keep_checkpoints: checkpoints kept on disk.
    loss_chunk: tokens per chunk of the exit cross-entropy (see
      `losses.chunked_cross_entropy`); 0 chooses one from the vocabulary size.
    loss_logits_dtype: dtype in which training steps store each chunk's
      logits between the unembedding matmul and the softmax ("float32" or
      "bfloat16": less memory traffic, logits rounded to bf16); validation
      always uses float32.
  """

  model: ModelConfig = ModelConfig()
  data: DataConfig = DataConfig()
  seq_len: int = 128
  batch_size: int = 16
  steps: int = 100
  learning_rate: float = 3e-3
  warmup_steps: int = 10
  min_lr_ratio: float = 0.1
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  grad_clip: float = 1.0
  exit_weights: tuple[float, ...] | None = None
  seed: int = 0
  mesh_shape: tuple[int, int, int] = (-1, 1, 1)
  eval_every: int = 0
  eval_windows: int = 64
  log_every: int = 10
  checkpoint_every: int = 0
  keep_checkpoints: int = 2
  loss_chunk: int = 0
  loss_logits_dtype: str = "float32"

  def __post_init__(self):
    require_ints(self, ("seq_len", "batch_size", "steps", "eval_windows",
                        "log_every", "keep_checkpoints"), minimum=1)
    require_ints(self, ("warmup_steps", "eval_every", "checkpoint_every",
                        "seed", "loss_chunk"), minimum=0)
    if self.seq_len > self.model.max_seq_len:
      raise ValueError(
          f"TrainConfig.seq_len={self.seq_len} is longer than the model's "
          f"max_seq_len={self.model.max_seq_len}; shorten seq_len or raise "
          "model.max_seq_len.")
    if self.warmup_steps >= self.steps:
      raise ValueError(
          f"TrainConfig.warmup_steps={self.warmup_steps} must be < steps="
          f"{self.steps}.")
    if self.exit_weights is not None:
      w = tuple(float(x) for x in self.exit_weights)
      if len(w) != self.model.granularity or any(x < 0 for x in w) or not sum(w):
        raise ValueError(
            f"TrainConfig.exit_weights={self.exit_weights} must hold "
            f"{self.model.granularity} non-negative weights (one per exit), "
            "not all zero.")
      object.__setattr__(self, "exit_weights", w)
    if len(tuple(self.mesh_shape)) != 3:
      raise ValueError(f"TrainConfig.mesh_shape={self.mesh_shape} must be "
                       "(data, fsdp, tensor).")
    object.__setattr__(self, "mesh_shape", tuple(self.mesh_shape))
    for name in ("learning_rate", "grad_clip"):
      require_number(self, name, lambda v: v > 0, "> 0")
    # Before, these were trained as given: a final rate above the peak, Adam
    # moments that never forget, weights pushed away from zero.
    require_number(self, "min_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]")
    for name in ("b1", "b2"):
      require_number(self, name, lambda v: 0 <= v < 1, "in [0, 1)")
    require_number(self, "weight_decay", lambda v: 0 <= v < math.inf, ">= 0")
    if self.loss_logits_dtype not in LOSS_LOGITS_DTYPES:
      raise ValueError(f"TrainConfig.loss_logits_dtype must be one of "
                       f"{LOSS_LOGITS_DTYPES}, got {self.loss_logits_dtype!r}.")

  @property
  def weights(self) -> tuple[float, ...]:
    """Exit weights of the family loss (1/G each by default)."""
    g = self.model.granularity
    return self.exit_weights or (1.0 / g,) * g

  @property
  def tokens(self) -> int:
    """D: training tokens of the run."""
    return self.steps * self.batch_size * self.seq_len

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "TrainConfig":
    """Inverse of `to_dict` (lists from JSON become tuples).

    `model` may give `granularity` instead of `exit_layers` (uniform exits).
    """
    d = dict(d)
    model = dict(d.pop("model", {}))
    granularity = model.pop("granularity", None)
    model = ModelConfig(**model)
    if granularity:
      model = model.with_uniform_exits(granularity)
    return cls(model=model, data=DataConfig.from_dict(d.pop("data", {})),
               **d)


def config_flags_parser(prog: str) -> Callable[[list[str]], list[str]]:
  """A flags parser for `absl.app.run(main, flags_parser=...)` in binaries
  with an ml_collections `--config` file: an override `--config.FIELD=...`
  naming a field the config does not have exits with one line naming it,
  instead of ml_collections' stack trace from inside flag parsing."""

  quotes = "'\""

  def parse(argv: list[str]) -> list[str]:
    from absl import app  # pylint: disable=g-import-not-at-top
    try:
      return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:
      message = e
      while isinstance(message, BaseException) and message.args:
        message = message.args[0]  # AttributeError(KeyError("'x'\nhint"))
      field, *hint = str(message).splitlines()  # the name in quotes
      sys.exit(f"{prog}: error: the config file has no field "
               f"{field.strip(quotes)!r}. " + " ".join(hint) +
               (" " if hint else "") + "A --config.FIELD=VALUE override must "
               "name a field the config file sets.")

  return parse
