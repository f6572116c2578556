r"""The README's main job: a small IsoFLOP sweep on 2 CPU cores (< 10 minutes).

3 budgets x G in {1, 2, 4} x 4 sizes (depth 4..7 at d_model = 8 x depth), byte-level
tokens of the default corpus, then the fits (with bootstrap intervals and held-out
selection) and every figure:

  python experiments/sweep.py --config=experiments/configs/tiny_cpu.py \
      --workdir=runs/tiny_cpu
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.budgets = (1.5e10, 4.5e10, 1.35e11)
  c.granularities = (1, 2, 4)
  c.depths = (4, 5, 6, 7)
  c.ladder = ml_collections.ConfigDict(dict(
      vocab_size=256, seq_len=64, aspect_ratio=8.0, ff_ratio=8 / 3,
      head_dim=8))
  c.data = ml_collections.ConfigDict(dict(source="default", val_fraction=0.02))
  c.batch_size = 8
  c.learning_rate = 3e-3
  c.warmup_fraction = 0.05
  c.seed = 0
  c.mesh_shape = (1, 1, 1)
  c.min_steps = 10
  c.max_epochs = 4.0
  c.eval_windows = 128
  c.flops_per_second = 1.5e10
  c.n_boot = 100
  return c
