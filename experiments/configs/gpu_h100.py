r"""One H100: budgets 1e14 to 3e15 FLOPs, G in {1, 2, 4, 8}, depths 4..16.

  python experiments/sweep.py --config=experiments/configs/gpu_h100.py \
      --workdir=runs/gpu_h100 [--dry_run]

Points that would pass over the corpus more than 4 times are dropped (the plan
says which); d_model = 32 x depth, head_dim 64, sequence 512, batch 32; bf16
compute with float32 master weights and cuDNN attention.
"""

from familial_jax import isoflop


def get_config():
  return isoflop.preset(
      budgets=(1e14, 3e14, 1e15, 3e15),
      granularities=(1, 2, 4, 8),
      depths=(4, 6, 8, 10, 12, 14, 16),
      ladder=dict(
          vocab_size=256, seq_len=512, aspect_ratio=32.0, ff_ratio=8 / 3,
          head_dim=64),
      data=dict(source="default", val_fraction=0.02),
      batch_size=32,
      learning_rate=2e-3,
      warmup_fraction=0.05,
      seed=0,
      mesh_shape=(-1, 1, 1),
      min_steps=20,
      max_epochs=4.0,
      eval_windows=512,
      flops_per_second=2e14,
      n_boot=200,
      compute_dtype="bfloat16",
      attention="cudnn",
      group_size=1)
