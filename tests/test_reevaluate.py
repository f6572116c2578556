"""Measuring trained runs again on other held-out windows (reevaluate.py)."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from familial_jax import reevaluate
from familial_jax import train
from familial_jax.config import DataConfig, ModelConfig, TrainConfig
from familial_jax.data.pipeline import Windows
from familial_jax.model import FamilialLM
from familial_jax.results import ResultsStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = "/usr/share/doc/linux-doc-6.1/Documentation"
pytestmark = pytest.mark.skipif(not os.path.isdir(DOCS),
                                reason="default corpus absent")


def _cfg(**kw):
  return dataclasses.replace(TrainConfig(
      model=ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4,
                        d_ff=64, max_seq_len=32).with_uniform_exits(2),
      data=DataConfig(path=os.path.join(DOCS, "process"), val_fraction=0.1,
                      eval_sample="first"),
      seq_len=32, batch_size=8, steps=30, warmup_steps=3, eval_windows=16,
      mesh_shape=(1, 1, 1)), **kw)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  """A sweep's layout (results/<id>.json, runs/<id>/checkpoints) of two
  trained runs, as sweep.py leaves it."""
  workdir = tmp_path_factory.mktemp("sweep")
  store = ResultsStore(str(workdir))
  for pid, seed in (("P0", 0), ("P1", 1)):
    record = train.run(_cfg(seed=seed), str(workdir / "runs" / pid),
                       log=lambda s: None)
    store.write(dict(record, point_id=pid, budget=1e9, depth=2))
  (workdir / "plan.json").write_text("{}")
  return workdir


def _reference(cfg, params, windows):
  """Every exit's mean cross-entropy from the full logits, in numpy."""
  logits = np.asarray(FamilialLM(cfg.model).apply(
      {"params": params}, windows[:, :-1]), np.float64)  # [G, B, T, V]
  logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + \
      logits.max(-1)
  target = np.take_along_axis(logits, np.broadcast_to(
      windows[None, :, 1:, None], logits.shape[:-1] + (1,)), -1)[..., 0]
  return (logz - target).mean((1, 2))


def test_own_windows_reproduce_the_record_and_all_windows_match_numpy(sweep):
  from familial_jax import relay
  run = str(sweep / "runs" / "P0")
  record = json.loads((sweep / "results" / "P0.json").read_text())
  # The run's own 16 first windows: what training measured.
  own = reevaluate.evaluate_run(run, eval_windows=16, eval_sample="first")
  assert own["windows"] == 16 and own["step"] == 30
  np.testing.assert_allclose(own["exit_losses"], record["exit_losses"],
                             rtol=1e-5)
  # All held-out windows (not a multiple of the batch of 256, so the last
  # batch is partial), against full logits and a numpy cross-entropy.
  cfg, params = relay.load_family(run)
  data = train.load_data(cfg.data)
  n = len(Windows(data.validation, cfg.seq_len))
  everything = reevaluate.evaluate_run(run, batch_size=256)
  assert everything["windows"] == n and n % 256
  windows = Windows(data.validation, cfg.seq_len).gather(np.arange(n))
  np.testing.assert_allclose(everything["exit_losses"],
                             _reference(cfg, params, windows), rtol=2e-5)
  # Spread windows are other text than the first ones.
  spread = reevaluate.evaluate_run(run, eval_windows=16)
  assert abs(spread["exit_losses"][0] - own["exit_losses"][0]) > 1e-3
  with pytest.raises(ValueError, match="eval_windows must be >= 0"):
    reevaluate.evaluate_run(run, eval_windows=-1)


def test_reevaluate_sweep_writes_records_that_fit_law_reads(sweep, tmp_path):
  out = tmp_path / "all"
  lines = []
  path = reevaluate.reevaluate_sweep(str(sweep), str(out), log=lines.append)
  assert len(lines) == 2 and (out / "plan.json").exists()
  for pid in ("P0", "P1"):
    old = json.loads((sweep / "results" / f"{pid}.json").read_text())
    new = json.loads((out / "results" / f"{pid}.json").read_text())
    got = reevaluate.evaluate_run(str(sweep / "runs" / pid))
    assert new["exit_losses"] == got["exit_losses"]
    assert new["family_loss"] == pytest.approx(np.mean(got["exit_losses"]))
    assert new["reevaluated"]["from"]["exit_losses"] == old["exit_losses"]
    assert new["reevaluated"]["windows"] == got["windows"]
    assert new["validation_tokens"] == got["windows"] * 32
    # Everything else is the trained run's record.
    assert new["train_history"] == old["train_history"] and new["N"] == old["N"]
  rows = open(path).read().splitlines()
  assert len(rows) == 1 + 2 * 2  # header, two points x two exits
  # Rerunning resumes: nothing is measured again.
  lines.clear()
  reevaluate.reevaluate_sweep(str(sweep), str(out), log=lines.append)
  assert not lines
  # Another sample is measured again.
  reevaluate.reevaluate_sweep(str(sweep), str(out), eval_windows=16,
                              eval_sample="first", log=lines.append)
  assert len(lines) == 2
  first = json.loads((out / "results" / "P0.json").read_text())
  np.testing.assert_allclose(
      first["exit_losses"], first["reevaluated"]["from"]["exit_losses"],
      rtol=1e-5)


def test_reevaluate_refuses_what_it_cannot_measure(sweep, tmp_path):
  with pytest.raises(ValueError, match="no recorded points"):
    reevaluate.reevaluate_sweep(str(tmp_path), str(tmp_path / "out"))
  # A recorded point whose checkpoints are gone is named.
  partial = tmp_path / "partial"
  (partial / "results").mkdir(parents=True)
  (partial / "results" / "P0.json").write_text(
      (sweep / "results" / "P0.json").read_text())
  with pytest.raises(ValueError, match=r"1 of 1 recorded points have no "
                     r"checkpoint .*P0"):
    reevaluate.reevaluate_sweep(str(partial), str(tmp_path / "out"))
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "reevaluate.py"),
       f"--workdir={partial}", f"--output={tmp_path / 'out'}"],
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode != 0 and "have no checkpoint" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_a_grouped_sweeps_members_are_measured_from_the_group(tmp_path):
  """Points a sweep trained as one vmapped group (runs/P0+P1) are read from
  the group's checkpoint: each member's own windows give its record, the
  shorter member included (its parameters stopped at its own step)."""
  cfgs = [_cfg(steps=30), _cfg(steps=20, warmup_steps=2)]
  records = train.run_group(cfgs, str(tmp_path / "runs" / "P0+P1"),
                            log=lambda s: None)
  store = ResultsStore(str(tmp_path))
  for pid, record in zip(("P0", "P1"), records):
    store.write(dict(record, point_id=pid, budget=1e9, depth=2))
  out = tmp_path / "out"
  reevaluate.reevaluate_sweep(str(tmp_path), str(out), eval_windows=16,
                              eval_sample="first", log=lambda s: None)
  for pid, record in zip(("P0", "P1"), records):
    new = json.loads((out / "results" / f"{pid}.json").read_text())
    np.testing.assert_allclose(new["exit_losses"], record["exit_losses"],
                               rtol=1e-5)
  assert records[0]["exit_losses"] != records[1]["exit_losses"]
  with pytest.raises(ValueError, match="holds a group of 2 runs"):
    reevaluate.evaluate_run(str(tmp_path / "runs" / "P0+P1"))
