"""Relay decoding against independent references (the training model)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from familial_jax import relay
from familial_jax.config import ModelConfig
from familial_jax.model import FamilialLM, extract_submodel, init_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=6, n_heads=4, d_ff=64,
                  max_seq_len=40, exit_layers=(2, 4, 6), tie_embeddings=False)


@pytest.fixture(scope="module")
def family():
  params = init_params(CFG, jax.random.PRNGKey(0))
  # Sharpen deeper exits more, so that their confidences differ and a
  # threshold mixes them (untied exits disagree with one another).
  for g in range(3):
    unembed = params[f"exits_{g}"]["unembed"]
    unembed["kernel"] = unembed["kernel"] * 2.0 * (g + 1)
  prompts = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (3, 7), 0,
                                          CFG.vocab_size))
  return params, prompts


def _greedy(cfg, params, prompts, n, exit_index=-1):
  """Reference: full forward over the growing sequence at every step."""
  tokens = np.asarray(prompts)
  apply = jax.jit(FamilialLM(cfg).apply)
  for _ in range(n):
    logits = apply({"params": params}, jnp.asarray(tokens))[exit_index]
    tokens = np.concatenate([tokens, np.asarray(logits[:, -1]).argmax(-1)[:,
                                                                            None]],
                            1)
  return tokens


def test_never_exiting_early_equals_full_model_greedy(family):
  params, prompts = family
  r = relay.Relay(CFG, params, window=4)
  out = r.decode(prompts, 12, relay.Policy("confidence", threshold=1.01))
  np.testing.assert_array_equal(out["tokens"], _greedy(CFG, params, prompts,
                                                       12))
  assert (out["exits"] == 2).all() and (out["recomputed"] == 0).all()


def test_each_segment_compiles_once(family):
  params, prompts = family
  r = relay.Relay(CFG, params, window=4)
  r.decode(prompts, 6, relay.Policy("entropy", threshold=3.0))
  r.decode(prompts[:, :4], 11, relay.Policy("fixed", index=2))
  r.decode(prompts, 9, relay.Policy("confidence", threshold=0.5),
           forced=np.zeros((3, 16), np.int32))
  assert [f._cache_size() for f in r._segment] == [1, 1, 1]
  assert [f._cache_size() for f in r._exit] == [1, 1, 1]


def test_always_exit_one_equals_submodel_greedy(family):
  params, prompts = family
  sub_cfg, sub_params = extract_submodel(CFG, params, 0)
  out = relay.Relay(CFG, params).decode(prompts, 12, relay.Policy("fixed",
                                                                  index=0))
  np.testing.assert_array_equal(out["tokens"],
                                _greedy(sub_cfg, sub_params, prompts, 12))
  assert (out["exits"] == 0).all()
  # Only the first tier worked; nothing crossed a link.
  assert (out["flops"][:, 1:] == 0).all() and (out["bytes"] == 0).all()


def _full_kv(params, tokens):
  _, inter = FamilialLM(CFG).apply({"params": params}, jnp.asarray(tokens),
                                   mutable=["intermediates"])
  inter = inter["intermediates"]
  return [(np.asarray(inter[f"blocks_{l}"]["attn"]["cached_key"][0]),
           np.asarray(inter[f"blocks_{l}"]["attn"]["cached_value"][0]))
          for l in range(CFG.n_layers)]


def test_mixed_exits_leave_exact_caches_after_recomputation(family):
  params, prompts = family
  r = relay.Relay(CFG, params, tier_map=[[0], [1, 2]], window=3)
  # An entropy threshold inside the range the exits produce mixes them.
  for threshold in np.linspace(3.0, 0.5, 11):
    out = r.decode(prompts, 16, relay.Policy("entropy", threshold=threshold))
    if len(np.unique(out["exits"])) == 3 and out["recomputed"].min() > 0:
      break
  else:
    pytest.fail("no threshold mixed all three exits")
  state = out["state"]
  n = int(state["filled"][0].min())
  full = _full_kv(params, state["tokens"][:, :n])

  def check():
    for g, layers in enumerate(r.layers):
      for i, layer in enumerate(layers):
        kc, vc = (np.asarray(a) for a in state["caches"][g][i])
        for b in range(len(prompts)):
          m = int(state["filled"][g][b])
          np.testing.assert_allclose(kc[b, :m], full[layer][0][b, :m],
                                     rtol=1e-5, atol=1e-5)
          np.testing.assert_allclose(vc[b, :m], full[layer][1][b, :m],
                                     rtol=1e-5, atol=1e-5)
  check()  # what each segment has filled is exact
  r.catch_up(state)
  assert (state["filled"] == state["filled"][0]).all()
  check()  # and after recomputing every pending position, all of it is


def test_accounting_by_hand(family):
  params, prompts = family
  r = relay.Relay(CFG, params)
  n, p = 5, prompts.shape[1]
  out = r.decode(prompts, n, relay.Policy("fixed", index=2))
  per_layer = 2 * (4 * 32 * 32 + 3 * 32 * 64)
  positions = np.arange(p - 1, p - 1 + n)
  by_tier = [sum(2 * per_layer + 2 * (4 * 32 * (t + 1)) + 2 * 32 * 64
                 for t in positions)] * 3
  seg = lambda t: 2 * per_layer + 2 * (4 * 32 * (t + 1))  # 2 layers each
  # The first tier's prefill covered the prompt (position p - 1 included);
  # deeper tiers fill the prompt's positions when first reached.
  prompt = sum(seg(t) for t in range(p - 1))
  assert out["prefill_flops"][0] == prompt + seg(p - 1)
  np.testing.assert_allclose(out["flops"][0], [
      by_tier[0] - seg(p - 1), by_tier[1] + prompt, by_tier[2] + prompt])
  # Tokens of every step cross both links; the first time a segment runs,
  # it also computes the prompt's positions (handed over too).
  d_bytes = 32 * 4
  assert out["bytes"][0] == 2 * (p + n - 1) * d_bytes
  assert out["recomputed"][0] == 0
  prof = r.profile
  compute = sum(f / s for f, s in zip(out["flops"][0], prof.flops_per_second))
  links = n * sum(prof.link_latency) + sum(
      (p + n - 1) * d_bytes / bw for bw in prof.link_bandwidth)
  np.testing.assert_allclose(out["latency"][0], compute + links, rtol=1e-9)


def test_bad_input_is_a_clear_error(family):
  params, prompts = family
  for tier_map, match in [([[0], [2]], "skips segment"),
                          ([[0, 1], [1, 2]], "repeats segment"),
                          ([[1], [0], [2]], "out of order"),
                          ([[0], [1], [2], [5]], "segments 0..2")]:
    with pytest.raises(ValueError, match=match):
      relay.Relay(CFG, params, tier_map=tier_map)
  r = relay.Relay(CFG, params)
  with pytest.raises(ValueError, match="exceed the model's context"):
    r.decode(np.zeros((1, 35), np.int32), 10, relay.Policy())
  other = init_params(CFG.with_exits((3, 6)), jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="another model"):
    relay.Relay(CFG, other)
  with pytest.raises(ValueError, match="unknown exit policy"):
    relay.Policy("greedy")
  # Before, these were an IndexError (a 1-D prompt), tokens truncated from
  # floats, a fixed exit past the last taken as the last (and -1 as the
  # first), and a NaN threshold that silently never let a token leave.
  for prompt, match in [(np.zeros(4, np.int32), r"\[batch, length >= 1\]"),
                        (np.zeros((1, 0), np.int32), "length >= 1"),
                        (np.full((1, 4), 2.7), "integer tokens"),
                        # Before: NaN logits for ids >= V, -1 read as V - 1.
                        (np.full((1, 4), CFG.vocab_size), "must be in"),
                        (np.full((1, 4), -1), r"ids from -1 to -1")]:
    with pytest.raises(ValueError, match=match):
      r.decode(prompt, 2, relay.Policy())
  text = np.full((prompts.shape[0], prompts.shape[1] + 2), CFG.vocab_size)
  with pytest.raises(ValueError, match="token ids must be in"):
    r.decode(prompts, 2, relay.Policy(), forced=text)
  for index in (3, 5):
    with pytest.raises(ValueError, match=r"index=\d is not an exit of this "
                       r"family \(G=3; valid: 0..2\)"):
      r.decode(prompts, 2, relay.Policy("fixed", index=index))
  for kwargs, match in [(dict(kind="fixed", index=-1), "index must be"),
                        (dict(kind="fixed", index=1.0), "index must be"),
                        (dict(threshold=float("nan")), "threshold must be"),
                        (dict(kind="entropy", threshold="0.5"),
                         "threshold must be")]:
    with pytest.raises(ValueError, match=match):
      relay.Policy(**kwargs)
  with pytest.raises(ValueError, match="no training run"):
    relay.load_family("/nonexistent")


DOCS = "/usr/share/doc/linux-doc-6.1/Documentation"


@pytest.mark.skipif(not os.path.isdir(DOCS), reason="default corpus absent")
def test_relay_binary_on_a_trained_family(tmp_path):
  from familial_jax import train
  from familial_jax.config import DataConfig, TrainConfig
  cfg = TrainConfig(
      model=ModelConfig(vocab_size=256, d_model=32, n_layers=3, n_heads=4,
                        d_ff=64, max_seq_len=32).with_uniform_exits(3),
      data=DataConfig(path=os.path.join(DOCS, "process"), val_fraction=0.1),
      seq_len=32, batch_size=8, steps=40, warmup_steps=4, eval_windows=8,
      mesh_shape=(1, 1, 1))
  workdir = tmp_path / "family"
  train.run(cfg, str(workdir), log=lambda s: None)
  out = tmp_path / "relay"
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "relay.py"),
       f"--workdir={workdir}", f"--output={out}", "--prompts=4",
       "--prompt_len=12", "--new_tokens=8", "--tiers=0;1,2",
       "--thresholds=0.1,0.5,1.01"], capture_output=True, text=True,
      timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads((out / "relay.json").read_text())["rows"]
  flops = [r["flops_per_token"] for r in rows]
  latency = [r["latency_ms_per_token"] for r in rows]
  assert flops == sorted(flops) and latency == sorted(latency)
  assert rows[-1]["agreement"] == 1.0 and rows[-1]["mean_exit"] == 3.0
  assert (out / "tradeoff.png").stat().st_size > 10_000
  # A checkpoint that does not match its config is refused clearly.
  saved = json.loads((workdir / "config.json").read_text())
  saved["model"]["d_ff"] = 96
  (workdir / "config.json").write_text(json.dumps(saved))
  with pytest.raises(ValueError, match="another model"):
    relay.load_family(str(workdir))
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "relay.py"),
       f"--workdir={workdir}", "--tiers=0;2"], capture_output=True,
      text=True, timeout=600, check=False)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr


def test_relay_binary_refuses_bad_flags_before_loading(tmp_path):
  """Flags that cannot work are refused when parsed, before the family loads
  (before, a bad threshold failed after loading it and decoding the full
  model's tokens)."""
  for bad, message in [("--prompts=0", "0 is not a positive integer"),
                       ("--window=0", "0 is not a positive integer"),
                       ("--thresholds=0.5,abc", "--thresholds must be"),
                       ("--link_latency=0.01,soon", "--link_latency must be")]:
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "relay.py"),
         f"--workdir={tmp_path / 'nothing here'}", bad], capture_output=True,
        text=True, timeout=600, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
