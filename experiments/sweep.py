r"""Runs an IsoFLOP sweep: plan, train every point, fit the laws, draw figures.

  python experiments/sweep.py --config=experiments/configs/tiny_cpu.py \
      --workdir=runs/tiny_cpu

Rerunning the same command skips finished points and resumes interrupted ones.
Split the work with --shard_index=i --num_shards=n (one process per shard, one
workdir); --point=ID runs one point; --dry_run prints the plan and exits.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from familial_jax import isoflop
from familial_jax import sharding
from familial_jax import sweep as sweep_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Sweep preset (experiments/configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Results, runs and figures.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the plan and exit.")
_SHARD = flags.DEFINE_integer("shard_index", 0, "This shard.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Number of shards.")
_POINT = flags.DEFINE_string("point", None, "Run only this point id.")
_NO_FIT = flags.DEFINE_bool("skip_fit", False, "Do not fit or draw.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # progress is printed; quiet orbax
  sharding.maybe_initialize_distributed(_DISTRIBUTED.value)
  log = lambda s: print(s, flush=True)
  try:
    d = _CONFIG.value.to_dict()
    n_boot = d.pop("n_boot", 100)
    sweep = isoflop.sweep_from_dict(d)
    if _DRY_RUN.value:
      log(sweep_lib.dry_run(sweep))
      return
    if not _WORKDIR.value:
      raise app.UsageError("--workdir is required (except with --dry_run).")
    out = sweep_lib.run(sweep, _WORKDIR.value, shard_index=_SHARD.value,
                        num_shards=_NUM_SHARDS.value, only=_POINT.value,
                        fit=not _NO_FIT.value, n_boot=n_boot, log=log)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"sweep: error: {e}")
  if out.get("preempted"):
    sys.exit(143)


if __name__ == "__main__":
  app.run(main)
