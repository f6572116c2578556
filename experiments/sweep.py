r"""Runs an IsoFLOP sweep: plan, train every point, fit the laws, draw figures.

  python experiments/sweep.py --config=experiments/configs/tiny_cpu.py \
      --workdir=runs/tiny_cpu

Rerunning the same command skips finished points and resumes interrupted ones.
Split the work with --shard_index=i --num_shards=n (one process per shard, one
workdir; each shard takes whole model shapes, so each shape compiles once);
--local_shards=n starts the n shard processes on this machine
(sharing its accelerator: small models leave a GPU idle between steps and
spend most of their time compiling, evaluating and checkpointing on the host),
waits for them and then fits; --point=ID runs one point; --collect trains
nothing and writes the plan and the CSV of the points recorded so far (and fits
once all are); --dry_run prints the plan (with --num_shards or --local_shards,
also what each shard runs) and exits.
"""

import os
import signal
import subprocess
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from familial_jax import isoflop
from familial_jax import sharding
from familial_jax import sweep as sweep_lib
from familial_jax.config import config_flags_parser

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Sweep preset (experiments/configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Results, runs and figures.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the plan and exit.")
_SHARD = flags.DEFINE_integer("shard_index", 0, "This shard (0 to "
                              "num_shards - 1).", lower_bound=0)
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Number of shards.",
                                   lower_bound=1)
_POINT = flags.DEFINE_string("point", None, "Run only this point id.")
_COLLECT = flags.DEFINE_bool(
    "collect", False, "Train nothing: write the plan and the recorded points' "
    "results.csv (with every point recorded and without --skip_fit, also the "
    "fits, figures and report.md), e.g. after copying records into "
    "workdir/results/. Runs on the CPU, so it can run beside a GPU sweep.")
_NO_FIT = flags.DEFINE_bool("skip_fit", False, "Do not fit or draw.")
_LOCAL = flags.DEFINE_integer(
    "local_shards", 0, "Run this many shard processes on this machine, then "
    "fit (0: this process runs the sweep itself).", lower_bound=0)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.mark_flags_as_required(["config"])
# Checked when the flags are parsed, --dry_run included.
flags.register_multi_flags_validator(
    ["shard_index", "num_shards"],
    lambda f: f["shard_index"] < f["num_shards"],
    "--shard_index must be less than --num_shards.")


def _run_local_shards(n: int, log) -> int:
  """Starts shard processes 0..n-1 of this command and waits for them.

  Each gets 1/n of the accelerator's memory (unless
  XLA_PYTHON_CLIENT_MEM_FRACTION is set); SIGTERM and SIGINT are passed on,
  so every shard checkpoints and stops as a single process would.

  Returns:
    0 when every shard finished, 143 when one was preempted, else 1.
  """
  args, skip = [], False
  for a in sys.argv[1:]:
    if skip or a.startswith("--local_shards="):
      skip = False
      continue
    if a == "--local_shards":
      skip = True
      continue
    args.append(a)
  env = sweep_lib.local_shard_env(n)
  procs = [subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), *args, f"--shard_index={i}",
       f"--num_shards={n}", "--skip_fit"], env=env) for i in range(n)]

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    codes = [p.wait() for p in procs]
  finally:
    for s, h in old.items():
      signal.signal(s, h)
  log(f"local shards finished with exit codes {codes}")
  if all(c == 0 for c in codes):
    return 0
  return 143 if 143 in codes or -signal.SIGTERM in codes else 1


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # progress is printed; quiet orbax
  if _COLLECT.value:
    if _LOCAL.value or _POINT.value or _DISTRIBUTED.value:
      raise app.UsageError("--collect trains nothing on one process; do not "
                           "combine it with --local_shards, --point or "
                           "--distributed.")
    # The accelerator may be training another process's shard: keep off it.
    jax.config.update("jax_platforms", "cpu")
  sharding.maybe_initialize_distributed(_DISTRIBUTED.value)
  log = sharding.progress
  try:
    d = _CONFIG.value.to_dict()
    n_boot = d.pop("n_boot", 100)
    sweep = isoflop.sweep_from_dict(d)
    if _DRY_RUN.value:
      log(sweep_lib.dry_run(sweep, max(_NUM_SHARDS.value, _LOCAL.value)))
      return
    if not _WORKDIR.value:
      raise app.UsageError("--workdir is required (except with --dry_run).")
    if _LOCAL.value:
      if _LOCAL.value < 1 or _NUM_SHARDS.value != 1 or _POINT.value:
        raise app.UsageError("--local_shards=n (n >= 1) starts its own shards; "
                             "do not combine it with --num_shards or --point.")
      code = _run_local_shards(_LOCAL.value, log)
      if code:
        sys.exit(code if code == 143 else
                 "sweep: error: a shard failed (its log is above)")
      if _NO_FIT.value:
        return
    out = sweep_lib.run(sweep, _WORKDIR.value, shard_index=_SHARD.value,
                        num_shards=_NUM_SHARDS.value, only=_POINT.value,
                        collect=_COLLECT.value,
                        fit=not _NO_FIT.value, n_boot=n_boot, log=log)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"sweep: error: {e}")
  if out.get("preempted"):
    sys.exit(143)


if __name__ == "__main__":
  app.run(main, flags_parser=config_flags_parser("sweep"))
