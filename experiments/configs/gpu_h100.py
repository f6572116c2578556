r"""One H100: budgets 1e14 to 3e15 FLOPs, G in {1, 2, 4, 8}, depths 4..20.

  python experiments/sweep.py --config=experiments/configs/gpu_h100.py \
      --workdir=runs/gpu_h100 [--dry_run]

d_model = 16 x depth (N = 0.2M to 24.6M), head_dim 32, sequence 512, batch
32; bf16 compute with float32 master weights and cuDNN attention. The ladder
is centred on the compute-optimal sizes: with the cpu_large fit extrapolated,
N* is about 0.84M at 1e14 and 6.1M at 3e15, and every budget has sizes 2.0x
to 8.5x below it and 3.9x to 7.9x above it (G = 8 from 1e15 on: its smallest
model has depth 8), so the IsoFLOP profiles should bracket their minima (cpu_large,
whose sizes began near or above N*, showed the cost of not doing so).
Those figures are from the five-budget cpu_large fit; the six-budget fit
(156 points) puts N* at 1.2M to 10M, which the ladder still brackets (3.2x to
12.5x below, 2.4x to 5.3x above for G <= 4; see its results README).
Points with fewer than 0.25 tokens per parameter (far past the optimum: a
few dozen steps) or more than 6 passes over the corpus (25 MB of text; 6
rather than 4 lets the top budget train models below its N*) are dropped;
the plan says which.

The preset before 2026-11-24 (d_model = 32 x depth, depths 4..16, head_dim
64, at most 4 epochs; 91 points, N to 50M) had its smallest size within 1.25x
below N*, or above it, at 13 of its 16 (budget, G) profiles; its two recorded
points (experiments/results/gpu_h100/previous_ladder/) are of that ladder.
"""

from familial_jax import isoflop


def get_config():
  return isoflop.preset(
      budgets=(1e14, 3e14, 1e15, 3e15),
      granularities=(1, 2, 4, 8),
      depths=(4, 6, 8, 10, 12, 14, 16, 18, 20),
      ladder=dict(seq_len=512, aspect_ratio=16.0, head_dim=32),
      batch_size=32,
      learning_rate=2e-3,
      min_tokens_per_param=0.25,
      max_epochs=6.0,
      eval_windows=512,
      flops_per_second=2e14,
      n_boot=200,
      compute_dtype="bfloat16",
      attention="cudnn")
