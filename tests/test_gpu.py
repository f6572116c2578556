"""GPU paths: cuDNN attention, bf16 chunked losses, vmapped group steps.

Skipped where no GPU is present (conftest.py)."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from familial_jax import losses, sharding, train
from familial_jax.config import ModelConfig, TrainConfig
from familial_jax.model import FamilialLM, init_params

pytestmark = pytest.mark.gpu

CFG = ModelConfig(vocab_size=512, d_model=128, n_layers=4, n_heads=2,
                  d_ff=384, max_seq_len=256, dtype="bfloat16",
                  exit_layers=(2, 4))


def test_cudnn_attention_matches_xla_in_bfloat16():
  tokens = jax.random.randint(jax.random.PRNGKey(0), (4, 256), 0, 512)
  params = init_params(CFG, jax.random.PRNGKey(1))
  outs = {}
  for impl in ("xla", "cudnn"):
    cfg = dataclasses.replace(CFG, attention=impl)
    outs[impl] = jax.jit(FamilialLM(cfg).apply)({"params": params}, tokens)
  for a, b in zip(outs["xla"], outs["cudnn"]):
    np.testing.assert_allclose(a, b, atol=0.1, rtol=0.05)
    assert np.mean(np.abs(a - b)) < 0.02


@pytest.mark.parametrize("logits_dtype", ["float32", "bfloat16"])
def test_chunked_loss_matches_plain_loss_on_gpu(logits_dtype):
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  h = jax.random.normal(k[0], (8, 256, 256)).astype(jnp.bfloat16)
  w = jax.random.normal(k[1], (256, 50304)) * 0.05
  y = jax.random.randint(k[2], (8, 256), 0, 50304)
  plain = lambda h, w: optax.softmax_cross_entropy_with_integer_labels(
      jnp.einsum("btd,dv->btv", h.astype(jnp.float32), w), y).mean()
  mine = lambda h, w: losses.chunked_cross_entropy(h, w, y, 32, logits_dtype)
  a, ga = jax.jit(jax.value_and_grad(plain, (0, 1)))(h, w)
  b, gb = jax.jit(jax.value_and_grad(mine, (0, 1)))(h, w)
  np.testing.assert_allclose(a, b, rtol=1e-3)
  for x, z in zip(ga, gb):
    x, z = np.asarray(x, np.float32), np.asarray(z, np.float32)
    assert np.abs(x - z).max() <= 0.02 * np.abs(x).max()


def test_group_step_with_cudnn_matches_single_steps():
  cfg = TrainConfig(model=dataclasses.replace(CFG, attention="cudnn"),
                    seq_len=256, batch_size=8, steps=5, warmup_steps=1,
                    mesh_shape=(1, 1, 1))
  other = dataclasses.replace(cfg, steps=3, learning_rate=1e-3)
  mesh = sharding.make_mesh((1, 1, 1))
  batch = jax.random.randint(jax.random.PRNGKey(0), (8, 257), 0, 512)
  single = [train.build(c, mesh) for c in (cfg, other)]
  group = train.build(cfg, mesh, members=2)
  states = [t.init(jax.random.PRNGKey(0)) for t in single]
  gstate = group.init(jax.random.PRNGKey(0))
  sched = np.stack([train.schedule_array(c) for c in (cfg, other)])
  for _ in range(4):
    outs = [t.step(s, batch, train.schedule_array(c))
            for t, s, c in zip(single, states, (cfg, other))]
    states = [o[0] for o in outs]
    gstate, gm = group.step(gstate, batch, sched)
  np.testing.assert_allclose(gm["exit_losses"][0], outs[0][1]["exit_losses"],
                             rtol=2e-2)
  assert int(gstate.step[1]) == 3  # member 1 stopped at its own length


_FIT = """
import json, sys
from familial_jax import laws
table = laws.table.load_csv(sys.argv[1])
fit = laws.fit(table, "multiplicative")
boot = laws.bootstrap(table, fit, n_boot=20)
print(json.dumps([float(v).hex() for v in [*fit.raw, *(
    x for k in sorted(boot.intervals) for x in boot.intervals[k])]]))
"""


def test_law_fit_in_a_gpu_process_equals_a_cpu_only_process():
  """The sweep fits in a process whose default device is the GPU; the law
  programs run on the host CPU (`forms.on_host_float64`), so this machine
  without its GPU gives the same bits (fit and bootstrap intervals of the
  committed tiny_cpu results; other CPUs may round differently)."""
  csv = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "experiments", "results", "tiny_cpu",
                     "results.csv")
  outs = []
  for platforms in ("", "cpu"):  # this machine's default (the GPU), CPU only
    # This pytest process holds most of the GPU's memory already.
    env = dict(os.environ, JAX_PLATFORMS=platforms,
               XLA_PYTHON_CLIENT_PREALLOCATE="false")
    outs.append(subprocess.run([sys.executable, "-c", _FIT, csv], env=env,
                               capture_output=True, text=True, check=True
                               ).stdout.strip().splitlines()[-1])
  assert outs[0] == outs[1]
