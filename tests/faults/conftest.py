"""Fixtures of the fault-injection suite (helpers live in helpers.py, imported
under one module name by the tests and by this file)."""

import json
import os

import pytest

from tests.faults.helpers import DOCS, MICRO, TALLY, losses, run_sweep


@pytest.fixture(scope="session", autouse=True)
def _print_tally():
  yield
  if any(TALLY.values()):  # shown with pytest -s
    print("\nfault-injection tally: " + json.dumps(TALLY))


@pytest.fixture(scope="session")
def micro_config(tmp_path_factory):
  if not os.path.isdir(DOCS):
    pytest.skip("default corpus absent: apt-get install linux-doc-6.1")
  path = tmp_path_factory.mktemp("config") / "micro.py"
  path.write_text(MICRO)
  return str(path)


@pytest.fixture(scope="session")
def micro_baseline(micro_config, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("baseline") / "run"
  proc = run_sweep(micro_config, workdir)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  result = losses(workdir)
  assert len(result) == 4
  return result
