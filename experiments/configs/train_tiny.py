r"""A tiny familial model (G = 2) on the default corpus; about 20 s on 2 CPU cores.

  python experiments/train.py --config=experiments/configs/train_tiny.py \
      --workdir=/tmp/familial_tiny

Override anything from the command line, e.g. --config.model.granularity=4
--config.steps=500 --config.data.source=files --config.data.path='texts/*.txt'.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      vocab_size=256, d_model=128, n_layers=4, n_heads=4, d_ff=352,
      max_seq_len=128, granularity=2, tie_embeddings=True, dtype="float32",
      param_dtype="float32", attention="xla"))
  c.data = ml_collections.ConfigDict(dict(
      source="default", path=ml_collections.FieldReference(None, str),
      tfds_name=ml_collections.FieldReference(None, str), tfds_split="train",
      tfds_data_dir=ml_collections.FieldReference(None, str), text_key="text",
      val_fraction=0.02, eval_sample="spread"))
  c.seq_len = 128
  c.batch_size = 16
  c.steps = 200
  c.learning_rate = 3e-3
  c.warmup_steps = 20
  c.min_lr_ratio = 0.1
  c.weight_decay = 0.1
  c.b1 = 0.9
  c.b2 = 0.95
  c.grad_clip = 1.0
  c.exit_weights = ml_collections.FieldReference(None, tuple)
  c.seed = 0
  c.mesh_shape = (-1, 1, 1)
  c.eval_every = 100
  c.eval_windows = 128
  c.log_every = 20
  c.checkpoint_every = 100
  c.keep_checkpoints = 2
  return c
