r"""Device memory a sweep's points need for training, counted on any machine.

For every planned point of a sweep preset: the bytes the backward pass keeps
from the forward pass (JAX's own list of saved residuals of the family loss,
traced, not run), plus the train state and gradients (float32 parameters,
two AdamW moments, float32 gradients). With cuDNN attention the [B, H, T, T]
attention probabilities are not stored (the fused kernel keeps per-row
statistics), so they are left out when the preset asks for cuDNN. XLA's own
temporaries (a layer's working set, a loss chunk's logits) come on top, so
the total is a lower bound on a point's peak. Prints the largest model
shapes and how many shard processes of `experiments/sweep.py --local_shards`
(each with the share of the device `sweep.local_shard_env` gives it) can hold
the largest.

  python benchmarks/activation_memory.py --config=experiments/configs/gpu_h100.py
"""

import dataclasses

from absl import app
from absl import flags
from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
# Public jax has only a printer of this list (jax.ad_checkpoint.
# print_saved_residuals); the list itself is what is summed here.
from jax._src.ad_checkpoint import saved_residuals

from familial_jax import isoflop
from familial_jax import sharding
from familial_jax import sweep as sweep_lib
from familial_jax import train
from familial_jax.config import config_flags_parser
from familial_jax.model import FamilialLM

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Sweep preset (experiments/configs/*.py).")
_DEVICE_GB = flags.DEFINE_float(
    "device_gb", 85.5, "Device memory in GB (an H100 80GB: 81,559 MiB).")
_TOP = flags.DEFINE_integer("top", 6, "Largest points to list.")
flags.mark_flags_as_required(["config"])


def point_bytes(p, cudnn: bool) -> dict:
  """Saved-residual and state bytes of one planned point's train step."""
  cfg = p.train
  # XLA attention traces on any machine (its [T, T] residuals are told apart
  # below).
  model = FamilialLM(dataclasses.replace(cfg.model, attention="xla"))
  tokens = jnp.zeros((cfg.batch_size, cfg.seq_len + 1), jnp.int32)
  params = jax.eval_shape(lambda: nn.unbox(model.init(  # shapes only
      jax.random.PRNGKey(0), tokens[:1, :-1])["params"]))
  weights = jnp.asarray(cfg.weights, jnp.float32)

  def loss(params):
    with nn.logical_axis_rules(sharding.RULES):
      return jnp.dot(weights, train.exit_losses(
          params, model, tokens, cfg.loss_chunk, cfg.loss_logits_dtype))

  saved, scores = 0, 0
  for aval, where in saved_residuals(loss, params):
    if "from the argument" in where:  # the parameters themselves
      continue
    size = int(np.prod(aval.shape)) * aval.dtype.itemsize
    if aval.ndim >= 4 and aval.shape[-1] == aval.shape[-2] == cfg.seq_len:
      scores += size
    else:
      saved += size
  n = sum(x.size for x in jax.tree.leaves(params))
  return {"saved": saved + (0 if cudnn else scores), "scores": scores,
          "state_and_grads": 16 * n}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  d = _CONFIG.value.to_dict()
  d.pop("n_boot", None)
  sweep = isoflop.sweep_from_dict(d)
  points, _, note = sweep_lib.plan_anywhere(sweep)
  cudnn = sweep.attention == "cudnn"
  # The points of one model shape (across budgets) need the same memory.
  shapes = [g[0] for g in isoflop.groups(points, len(points))]
  rows = sorted(((point_bytes(p, cudnn), p) for p in shapes),
                key=lambda r: -(r[0]["saved"] + r[0]["state_and_grads"]))
  print(f"{len(points)} points, {len(rows)} shapes; the largest:"
        + (f" ({note})" if note else ""))
  print(f"{'point':<18}{'d_model':>8}{'layers':>7}{'saved GB':>10}"
        f"{'state GB':>10}{'total GB':>10}"
        + ("" if cudnn else f"{'of which TxT':>14}"))
  for b, p in rows[:_TOP.value]:
    total = (b["saved"] + b["state_and_grads"]) / 1e9
    print(f"{p.id:<18}{p.model.d_model:>8}{p.model.n_layers:>7}"
          f"{b['saved'] / 1e9:>10.2f}{b['state_and_grads'] / 1e9:>10.2f}"
          f"{total:>10.2f}" + ("" if cudnn else f"{b['scores'] / 1e9:>14.2f}"))
  need = (rows[0][0]["saved"] + rows[0][0]["state_and_grads"]) / 1e9
  share = lambda n: float(sweep_lib.local_shard_env(n, {})[
      "XLA_PYTHON_CLIENT_MEM_FRACTION"])
  fits = [n for n in (1, 2, 4, 8, 16) if share(n) * _DEVICE_GB.value > need]
  print(f"\nattention: {sweep.attention} ([B, H, T, T] probabilities "
        f"{'not ' if cudnn else ''}stored). The largest point needs at least "
        f"{need:.1f} GB (XLA temporaries come on top); local shards that "
        f"hold it on {_DEVICE_GB.value:g} GB (each its "
        f"sweep.local_shard_env share, {share(8):.3f} of it at 8): "
        f"{', '.join(map(str, fits)) or 'none'}.")


if __name__ == "__main__":
  app.run(main, flags_parser=config_flags_parser("activation_memory"))
