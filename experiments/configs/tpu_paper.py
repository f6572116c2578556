r"""The paper's budgets, 1e18 to 1e21 FLOPs, for TPU pods (FSDP over the pod).

  python experiments/sweep.py --config=experiments/configs/tpu_paper.py \
      --workdir=/mnt/shared/tpu_paper --dry_run   # prints the plan anywhere

On a pod run the same command on every host with --distributed; hosts split
the points with --shard_index/--num_shards or share each point's mesh.
Data: a prepared TFDS text dataset (ArrayRecord) via --config.data.*.
"""

from familial_jax import isoflop


def get_config():
  return isoflop.preset(
      budgets=(1e18, 3e18, 1e19, 3e19, 1e20, 3e20, 1e21),
      granularities=(1, 2, 4, 8),
      depths=(12, 16, 20, 24, 28, 32, 40, 48),
      ladder=dict(seq_len=2048, aspect_ratio=64.0, head_dim=128),
      data=dict(
          source="tfds", tfds_name="c4/en:3.1.0",
          tfds_data_dir="gs://your-bucket/tensorflow_datasets",
          val_fraction=0.001),
      batch_size=512,
      learning_rate=1e-3,
      warmup_fraction=0.02,
      mesh_shape=(1, -1, 1),
      min_steps=100,
      max_epochs=1.0,
      eval_windows=1024,
      flops_per_second=4e16,
      n_boot=200)
