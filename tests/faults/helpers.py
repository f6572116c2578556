"""Helpers of the fault-injection suite: a micro sweep run in subprocesses,
checks on its results, and the tally of what was injected."""

import os
import subprocess
import sys
import textwrap

from familial_jax.results import ResultsStore

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
DOCS = "/usr/share/doc/linux-doc-6.1/Documentation"

MICRO = textwrap.dedent(f"""
    import ml_collections

    def get_config():
      c = ml_collections.ConfigDict()
      c.budgets = (4e8, 1.2e9)
      c.granularities = (1, 2)
      c.depths = (2,)
      c.ladder = ml_collections.ConfigDict(dict(
          vocab_size=256, seq_len=32, aspect_ratio=8.0, head_dim=8))
      c.data = ml_collections.ConfigDict(dict(
          source="default", path="{DOCS}/process", val_fraction=0.1))
      c.batch_size = 4
      c.min_steps = 10
      c.mesh_shape = (1, 1, 1)
      c.eval_windows = 16
      c.n_boot = 0
      return c
    """)

# Tally of what the suite injected and verified, printed at the end of the
# session (RELIABILITY.md quotes it).
TALLY = {"kills": 0, "resumes_verified": 0, "records_checked": 0,
         "inputs_fuzzed": 0}


def run_sweep(config, workdir, fault=None, *extra, timeout=600):
  """Runs experiments/sweep.py to completion (or to its injected death)."""
  env = dict(os.environ, XLA_FLAGS="")
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


