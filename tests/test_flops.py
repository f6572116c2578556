"""Parameter and FLOP accounting against the parameter tree and XLA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from familial_jax import flops
from familial_jax.config import ModelConfig
from familial_jax.model import (FamilialLM, count_params, extract_submodel,
                                init_params)

BASE = ModelConfig(vocab_size=300, d_model=64, n_layers=4, n_heads=4, d_ff=160,
                   max_seq_len=32)

CONFIGS = [
    BASE,
    BASE.with_uniform_exits(2),
    BASE.with_uniform_exits(4),
    ModelConfig(vocab_size=300, d_model=64, n_layers=4, n_heads=4, d_ff=160,
                max_seq_len=32, tie_embeddings=False).with_uniform_exits(2),
    ModelConfig(vocab_size=50, d_model=48, n_layers=6, n_heads=6, d_ff=96,
                max_seq_len=16, tie_embeddings=False).with_uniform_exits(3),
]


def _embedding_leaves(params):
  leaves = [params["embed"]["embedding"]]
  leaves += [v["unembed"]["kernel"] for k, v in params.items()
             if k.startswith("exits_") and "unembed" in v]
  return leaves


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"G{c.granularity}"
                         f"{'tied' if c.tie_embeddings else 'untied'}")
def test_param_counts_equal_parameter_tree(cfg):
  params = init_params(cfg, jax.random.PRNGKey(0))
  total = count_params(params)
  embedding = sum(x.size for x in _embedding_leaves(params))
  assert flops.total_params(cfg) == total
  assert flops.embedding_params(cfg) == embedding
  assert flops.non_embedding_params(cfg) == total - embedding
  for g, n_g in enumerate(flops.exit_non_embedding_params(cfg)):
    sub_cfg, sub_params = extract_submodel(cfg, params, g)
    assert n_g == count_params(sub_params) - sum(
        x.size for x in _embedding_leaves(sub_params))
    assert n_g == flops.non_embedding_params(sub_cfg)


def test_hand_computed_golden_numbers():
  cfg = ModelConfig(vocab_size=1000, d_model=64, n_layers=2, n_heads=4,
                    d_ff=128, max_seq_len=100, exit_layers=(1, 2))
  block = 4 * 64 * 64 + 3 * 64 * 128 + 2 * 64  # 41088
  assert flops.non_embedding_params(cfg) == 2 * block + 2 * 64
  fpt = flops.flops_per_token(cfg)
  assert fpt.attention_projections == 2 * 2 * 4 * 64 * 64
  assert fpt.attention_scores == 2 * 2 * 100 * 64  # causal: half of 4*T*d
  assert flops.flops_per_token(cfg, causal=False).attention_scores == (
      2 * 4 * 100 * 64)
  assert fpt.mlp == 2 * 2 * 3 * 64 * 128
  assert fpt.exits == (2 * 64 * 1000,) * 2
  # Training: 6 N per token for the matmul parameters, plus attention, plus
  # 6 * d * V for each exit head.
  matmul_params = 2 * (4 * 64 * 64 + 3 * 64 * 128)
  assert fpt.train == 6 * matmul_params + 3 * 2 * 2 * 100 * 64 + 2 * 6 * 64 * 1000
  assert flops.training_flops(cfg, 1e6) == pytest.approx(1e6 * fpt.train)
  assert flops.mfu(1000.0, 1e9, 4e12) == pytest.approx(0.25)
  with pytest.raises(ValueError, match="peak"):
    flops.mfu(1.0, 1.0, 0.0)


@pytest.mark.parametrize("cfg", [
    ModelConfig(vocab_size=256, d_model=128, n_layers=4, n_heads=4, d_ff=512,
                max_seq_len=128).with_uniform_exits(2),
    ModelConfig(vocab_size=4096, d_model=128, n_layers=2, n_heads=4, d_ff=384,
                max_seq_len=64),
    ModelConfig(vocab_size=1000, d_model=96, n_layers=8, n_heads=6, d_ff=256,
                max_seq_len=256, tie_embeddings=False).with_uniform_exits(4),
], ids=["V256-L4-G2", "V4096-L2-G1", "V1000-L8-G4-untied"])
def test_forward_flops_match_xla_cost_analysis(cfg):
  batch, length = 2, cfg.max_seq_len
  params = init_params(cfg, jax.random.PRNGKey(0))
  tokens = jnp.zeros((batch, length), jnp.int32)
  fwd = jax.jit(lambda p, t: FamilialLM(cfg).apply({"params": p}, t))
  cost = fwd.lower(params, tokens).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla = cost["flops"] / (batch * length)
  # XLA's attention computes (and masks) the full score matrix.
  ours = flops.flops_per_token(cfg, length, causal=False).forward
  print(f"{cfg.vocab_size=} {cfg.n_layers=} G={cfg.granularity}: "
        f"XLA {xla:.0f} FLOPs/token, analytic {ours}, ratio {xla / ours:.4f}")
  assert xla == pytest.approx(ours, rel=0.05)


def test_submodel_flops_are_prefix_of_family():
  cfg = BASE.with_uniform_exits(4)
  fam = flops.flops_per_token(cfg)
  for g in range(4):
    sub = flops.submodel_flops_per_token(cfg, g)
    assert sub.exits == fam.exits[:1]
    assert sub.mlp * cfg.n_layers == fam.mlp * cfg.exit_layers[g]
  last = flops.submodel_flops_per_token(cfg, 3)
  assert fam.forward - last.forward == 3 * 2 * cfg.d_model * cfg.vocab_size
  assert np.isclose(fam.train, 3 * fam.forward)


@pytest.mark.parametrize("granularity", [1, 4, 8])
def test_ladder_depth_inverts_its_parameter_count(granularity):
  """layers_for (Newton on the cubic N(L)) against scipy's root finder, from
  10^2 to 10^13 parameters, and N(layers_for(N)) = N to rounding."""
  ladder = flops.ShapeLadder(vocab_size=256, seq_len=64, aspect_ratio=3.0,
                             ff_ratio=8 / 3, head_dim=6)
  n = np.geomspace(1e2, 1e13, 23)
  depth = ladder.layers_for(n, granularity)
  np.testing.assert_allclose(
      ladder.non_embedding_params(depth, granularity), n, rtol=1e-14)
  for x, got in zip(n, depth):
    want = optimize.brentq(
        lambda l, x=x: ladder.non_embedding_params(l, granularity) - x,
        1e-6, 1e6, xtol=1e-300, rtol=4 * np.finfo(float).eps)
    assert got == pytest.approx(want, rel=1e-14)
  # An integer depth comes back.
  assert ladder.layers_for(ladder.non_embedding_params(12, granularity),
                           granularity) == pytest.approx(12, rel=1e-14)
  # N or G that no model has is refused (before: a negative depth and
  # negative FLOPs for N < 0, and FLOPs of a model without exits for G = 0).
  for n_bad, g_bad, message in [(-1e6, granularity, "n_params must be"),
                                ([1e6, np.nan], granularity, "n_params must"),
                                (1e6, 0, "granularity must be a whole"),
                                (1e6, 2.5, "granularity must be a whole")]:
    for method in (ladder.layers_for, ladder.train_flops_per_token,
                   ladder.exit_params):
      with pytest.raises(ValueError, match=message):
        method(n_bad, g_bad)


def test_a_ladder_refuses_shapes_that_cannot_exist():
  """Each field of a ShapeLadder that no model could have is a ValueError
  naming it (before, a vocabulary of 0 or a negative aspect ratio gave FLOPs
  of 0 or below to every analysis), also from a sweep config's dict."""
  from familial_jax import isoflop
  good = dict(vocab_size=256, seq_len=64, aspect_ratio=32, ff_ratio=2.5,
              head_dim=8)
  flops.ShapeLadder(**good)  # an int aspect ratio is fine
  for name, value in [("vocab_size", 0), ("seq_len", 64.0),
                      ("head_dim", True), ("aspect_ratio", -1.0),
                      ("aspect_ratio", float("inf")), ("ff_ratio", 0),
                      ("ff_ratio", "2.5")]:
    with pytest.raises(ValueError, match=f"ShapeLadder.{name} must be"):
      flops.ShapeLadder(**dict(good, **{name: value}))
  with pytest.raises(ValueError, match="ShapeLadder.aspect_ratio must be"):
    isoflop.sweep_from_dict({"ladder": dict(good, aspect_ratio=0.0)})
