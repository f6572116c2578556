"""SIGKILL at many points of a sweep (mid-step, mid-checkpoint, mid-record),
then rerun: results equal an uninterrupted sweep, no record is ever partial."""

import signal

import numpy as np
import pytest

from tests.faults.helpers import (TALLY, assert_no_partial_record, losses,
                                   run_sweep)

# One sweep, killed again and again; each rerun resumes from what the last
# one left. Visit counts restart in every process.
CHAIN = ["step:3", "checkpoint:1", "result:2", "step:12", "record:1",
         "checkpoint:2", "result:5", "step:25", "record:2"]
# Mostly early visits: each process restarts its counts, and a run that gets
# far enough finishes the sweep, after which no fault can fire.
LONG_CHAIN = ["step:2", "checkpoint:1", "result:1", "result:2", "step:5",
              "record:1", "checkpoint:2", "result:3", "step:9", "checkpoint:1",
              "result:4", "step:3", "record:1", "result:2"]


def _chain(micro_config, baseline, workdir, chain):
  killed = 0
  for fault in chain:
    proc = run_sweep(micro_config, workdir, fault)
    print(f"fault {fault}: exit {proc.returncode}")
    if proc.returncode == -signal.SIGKILL:
      killed += 1
      TALLY["kills"] += 1
    else:  # the sweep finished before reaching the fault
      assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert_no_partial_record(workdir)
  proc = run_sweep(micro_config, workdir)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert_no_partial_record(workdir)
  final = losses(workdir)
  assert final.keys() == baseline.keys()
  for pid in baseline:
    np.testing.assert_array_equal(final[pid], baseline[pid], err_msg=pid)
    TALLY["resumes_verified"] += 1
  return killed


def test_kill_chain_ends_equal_to_uninterrupted(micro_config, micro_baseline,
                                                tmp_path):
  killed = _chain(micro_config, micro_baseline, tmp_path / "run", CHAIN)
  assert killed >= len(CHAIN) - 2  # nearly every fault fired


@pytest.mark.slow
def test_long_kill_chain(micro_config, micro_baseline, tmp_path):
  killed = _chain(micro_config, micro_baseline, tmp_path / "run", LONG_CHAIN)
  assert killed >= 10


def test_truncated_record_is_rerun_not_used(micro_config, micro_baseline,
                                            tmp_path):
  workdir = tmp_path / "run"
  assert run_sweep(micro_config, workdir).returncode == 0
  victim = sorted(micro_baseline)[0]
  path = workdir / "results" / f"{victim}.json"
  text = path.read_text()
  path.write_text(text[:len(text) // 3])  # a half-written file on a share
  proc = run_sweep(micro_config, workdir)
  assert proc.returncode == 0
  assert "1 to run" in proc.stdout
  np.testing.assert_array_equal(losses(workdir)[victim],
                                micro_baseline[victim])
  TALLY["resumes_verified"] += 1
