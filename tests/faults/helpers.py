"""Helpers of the fault-injection suite: a micro sweep run in subprocesses,
checks on its results, and the tally of what was injected."""

import os
import subprocess
import sys

from familial_jax.results import ResultsStore
from tests import test_sweep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
DOCS = "/usr/share/doc/linux-doc-6.1/Documentation"

# The micro sweep of tests/test_sweep.py with one depth: 4 points, each
# checkpointing mid-run (every 15 planned ms at the default 2e10 FLOP/s:
# every 25 or 35 steps of 34 to 142), so that kills land before, in and after
# mid-run saves.
MICRO = test_sweep.MICRO.replace(
    "c.depths = (2, 3)", "c.depths = (2,)\n  c.checkpoint_minutes = 2.5e-4")
assert MICRO != test_sweep.MICRO

# Tally of what the suite injected and verified, printed at the end of the
# session (RELIABILITY.md quotes it).
TALLY = {"kills": 0, "resumes_verified": 0, "records_checked": 0,
         "inputs_fuzzed": 0}


def run_sweep(config, workdir, fault=None, *extra, timeout=600):
  """Runs experiments/sweep.py to completion (or to its injected death)."""
  env = test_sweep.sweep_env()
  env.pop("FAMILIAL_JAX_FAULT", None)
  if fault:
    env["FAMILIAL_JAX_FAULT"] = fault
  return subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "sweep.py"),
       f"--config={config}", f"--workdir={workdir}", "--skip_fit", *extra],
      capture_output=True, text=True, env=env, timeout=timeout, check=False)


def assert_no_partial_record(workdir):
  """Every file named like a record parses as a complete record."""
  store = ResultsStore(str(workdir))
  if not os.path.isdir(store.dir):
    return
  for name in os.listdir(store.dir):
    if name.endswith(".json"):
      assert store.read(name[:-len(".json")]) is not None, (
          f"partial or invalid record {name}")
      TALLY["records_checked"] += 1


def losses(workdir):
  return {r["point_id"]: r["exit_losses"]
          for r in ResultsStore(str(workdir)).records()}


