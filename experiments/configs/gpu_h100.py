r"""One H100: budgets 1e14 to 3e15 FLOPs, G in {1, 2, 4, 8}, depths 4..16.

  python experiments/sweep.py --config=experiments/configs/gpu_h100.py \
      --workdir=runs/gpu_h100 [--dry_run]

Points that would pass over the corpus more than 4 times are dropped (the plan
says which); d_model = 32 x depth, head_dim 64, sequence 512, batch 32; bf16
compute with float32 master weights and cuDNN attention.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.budgets = (1e14, 3e14, 1e15, 3e15)
  c.granularities = (1, 2, 4, 8)
  c.depths = (4, 6, 8, 10, 12, 14, 16)
  c.ladder = ml_collections.ConfigDict(dict(
      vocab_size=256, seq_len=512, aspect_ratio=32.0, ff_ratio=8 / 3,
      head_dim=64))
  c.data = ml_collections.ConfigDict(dict(source="default", val_fraction=0.02))
  c.batch_size = 32
  c.learning_rate = 2e-3
  c.warmup_fraction = 0.05
  c.seed = 0
  c.mesh_shape = (-1, 1, 1)
  c.min_steps = 20
  c.max_epochs = 4.0
  c.eval_windows = 512
  c.flops_per_second = 2e14
  c.n_boot = 200
  c.compute_dtype = "bfloat16"
  c.attention = "cudnn"
  c.group_size = 1
  return c
