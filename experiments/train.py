r"""Trains one familial model and writes its result record.

  python experiments/train.py --config=experiments/configs/train_tiny.py \
      --workdir=/tmp/familial_tiny

Prints progress (step, loss per exit, tokens/s, ETA), checkpoints with orbax
(rerunning the same command resumes; compiled programs are cached in
workdir/jax_cache or JAX_COMPILATION_CACHE_DIR), and writes workdir/result.json with
every exit's validation loss, N, N_g, D, C, G, seed, versions and the corpus
hash, and workdir/curves.png (each exit's loss against step). Multi-host (TPU
pods, clusters): add --distributed on every host.
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from familial_jax import plots
from familial_jax import sharding
from familial_jax import train
from familial_jax.config import TrainConfig, config_flags_parser

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints and results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (off TPU/SLURM).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # progress is printed; quiet orbax
  kwargs = {k: v for k, v in dict(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value).items() if v is not None}
  sharding.maybe_initialize_distributed(_DISTRIBUTED.value, **kwargs)
  try:
    cfg = TrainConfig.from_dict(_CONFIG.value.to_dict())
    train.enable_compilation_cache(_WORKDIR.value)
    record = train.run(cfg, _WORKDIR.value,
                       log=sharding.progress)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"train: error: {e}")
  if record.get("preempted"):
    sys.exit(143)  # SIGTERM: checkpoint saved; rerun to resume
  if "exit_losses" in record:
    print("validation loss per exit:",
          json.dumps([round(x, 4) for x in record["exit_losses"]]))
    wrote = [os.path.join(_WORKDIR.value, "result.json")]
    if jax.process_index() == 0:  # the process that wrote result.json
      wrote.append(plots.training_curves(
          record, os.path.join(_WORKDIR.value, "curves.png")))
    print(f"N={record['N']:,} D={record['D']:,} C={record['C']:.3e} "
          f"G={record['G']}  wrote " + " and ".join(wrote))


if __name__ == "__main__":
  app.run(main, flags_parser=config_flags_parser("train"))
