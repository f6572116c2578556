r"""The largest IsoFLOP sweep this project runs on 2 CPU cores (about 4.7 hours).

Stands in for the gpu_h100 sweep when no GPU is lent (issue 8): 6 budgets
(4e10 to 2.88e12 FLOPs) x G in {1, 2, 4, 8} x 7 sizes (depth 4 to 16 at
d_model = 3 x depth, N = 7.0k to 444k; G = 8 needs depth >= 8, so it gets 5),
byte-level tokens of the default corpus; 156 trainings (279 min summed on
the project's 2-core machine). With depths 4 and 6, 15 of the 24 IsoFLOP
profiles bracket their minimum:

  python experiments/sweep.py --config=experiments/configs/cpu_large.py \
      --workdir=runs/cpu_large [--dry_run]
"""

from familial_jax import isoflop


def get_config():
  return isoflop.preset(
      budgets=(4e10, 1.2e11, 3.6e11, 7.2e11, 1.44e12, 2.88e12),
      granularities=(1, 2, 4, 8),
      depths=(4, 6, 8, 10, 12, 14, 16),
      ladder=dict(seq_len=64, aspect_ratio=3.0, head_dim=6),
      batch_size=8,
      mesh_shape=(1, 1, 1),
      min_steps=10,
      eval_windows=128,
      # The committed records' validation set: the first 128 held-out windows
      # (narrow: README, "A narrow validation set"); rerun, it must match.
      data=dict(eval_sample="first"),
      flops_per_second=1.5e10,
      n_boot=200)
