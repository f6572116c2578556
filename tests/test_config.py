"""ModelConfig validation and exit placement."""

import numpy as np
import pytest

from familial_jax.config import ModelConfig, uniform_exits


def test_uniform_exits():
  assert uniform_exits(12, 4) == (3, 6, 9, 12)
  assert uniform_exits(12, 1) == (12,)
  assert uniform_exits(5, 2) == (2, 5)
  assert uniform_exits(8, 8) == tuple(range(1, 9))
  assert ModelConfig(n_layers=6).with_uniform_exits(3).exit_layers == (2, 4, 6)


def test_defaults_and_properties():
  cfg = ModelConfig(n_layers=6, exit_layers=[2, 6])
  assert cfg.exit_layers == (2, 6)  # lists are normalised to tuples
  assert cfg.granularity == 2
  assert cfg.head_dim == 16
  assert ModelConfig(n_layers=3).exit_layers == (3,)
  sub = cfg.submodel(0)
  assert (sub.n_layers, sub.exit_layers) == (2, (2,))
  hash(cfg)  # frozen and hashable: usable as a jit static argument


@pytest.mark.parametrize("kwargs, field, fix", [
    (dict(exit_layers=(4, 2)), "exit_layers", "sorted"),
    (dict(exit_layers=(2, 2, 4)), "exit_layers", "repeats"),
    (dict(exit_layers=(2, 5)), "exit_layers", "past the last layer"),
    (dict(exit_layers=(1, 2)), "exit_layers", "last exit must be the final"),
    (dict(exit_layers=()), "exit_layers", "G must be >= 1"),
    (dict(exit_layers=(0, 4)), "exit_layers", "1-based"),
    (dict(exit_layers="4"), "exit_layers", "sequence"),
    (dict(n_heads=3), "n_heads", "divisors of d_model"),
    (dict(d_model=24, n_heads=8), "head_dim", "even"),
    (dict(d_model=0), "d_model", "positive integer"),
    (dict(vocab_size=-1), "vocab_size", "positive integer"),
    (dict(d_ff=2.0), "d_ff", "positive integer"),
    (dict(dtype="fp8"), "dtype", "float32"),
    (dict(attention="flash"), "attention", "cudnn"),
])
def test_invalid_configs_name_field_and_fix(kwargs, field, fix):
  with pytest.raises(ValueError) as err:
    ModelConfig(n_layers=4, **kwargs)
  assert field in str(err.value)
  assert fix in str(err.value)


@pytest.mark.parametrize("n_layers, g, msg", [
    (4, 0, r"G\) must be an integer >= 1"),
    (4, 5, "exceeds n_layers"),
])
def test_invalid_granularity(n_layers, g, msg):
  with pytest.raises(ValueError, match=msg):
    uniform_exits(n_layers, g)


@pytest.mark.parametrize("index", [2, -1, 1.0, True, "1", None])
def test_submodel_index_out_of_range(index):
  """An exit index that is not an integer in 0..G-1 is a ValueError (a float
  or a string was a TypeError from a tuple lookup); a numpy integer works."""
  cfg = ModelConfig(n_layers=4).with_uniform_exits(2)
  with pytest.raises(ValueError, match=r"exit_index=.*valid: 0\.\.1"):
    cfg.submodel(index)
  assert cfg.submodel(np.int64(1)) == cfg.submodel(1)
  assert cfg.submodel(0).n_layers == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(min_lr_ratio=2.0), r"min_lr_ratio must be in \[0, 1\], got 2.0"),
    (dict(min_lr_ratio=-0.1), r"min_lr_ratio must be in \[0, 1\]"),
    (dict(b1=1.5), r"b1 must be in \[0, 1\), got 1.5"),
    (dict(b2=1.0), r"b2 must be in \[0, 1\)"),
    (dict(weight_decay=-0.1), "weight_decay must be >= 0"),
    (dict(weight_decay=float("nan")), "weight_decay must be >= 0"),
    (dict(learning_rate=0.0), "learning_rate must be > 0"),
    (dict(warmup_steps=100, steps=100), "warmup_steps=100 must be < steps"),
])
def test_invalid_optimizer_settings_are_refused(kwargs, message):
  """Before, a final rate above the peak, betas >= 1 and a negative weight
  decay were trained as given."""
  from familial_jax.config import TrainConfig
  with pytest.raises(ValueError, match=message):
    TrainConfig(**kwargs)


def test_optimizer_settings_at_their_meaningful_edges_are_allowed():
  from familial_jax.config import TrainConfig
  cfg = TrainConfig(min_lr_ratio=0.0, b1=0.0, b2=0.0, weight_decay=0.0)
  assert (cfg.min_lr_ratio, cfg.b1, cfg.b2, cfg.weight_decay) == (0, 0, 0, 0)
  assert TrainConfig(min_lr_ratio=1.0).min_lr_ratio == 1.0
