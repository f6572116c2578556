r"""The README's main job: a small IsoFLOP sweep on 2 CPU cores (< 10 minutes).

3 budgets x G in {1, 2, 4} x 4 sizes (depth 4..7 at d_model = 8 x depth), byte-level
tokens of the default corpus, then the fits (with bootstrap intervals and held-out
selection) and every figure:

  python experiments/sweep.py --config=experiments/configs/tiny_cpu.py \
      --workdir=runs/tiny_cpu
"""

from familial_jax import isoflop


def get_config():
  return isoflop.preset(
      budgets=(1.5e10, 4.5e10, 1.35e11),
      granularities=(1, 2, 4),
      depths=(4, 5, 6, 7),
      ladder=dict(seq_len=64, aspect_ratio=8.0, head_dim=8),
      batch_size=8,
      mesh_shape=(1, 1, 1),
      min_steps=10,
      eval_windows=128,
      # The committed records' validation set: the first 128 held-out windows
      # (narrow: README, "A narrow validation set"); rerun, it must match.
      data=dict(eval_sample="first"),
      flops_per_second=1.5e10,
      n_boot=100)
