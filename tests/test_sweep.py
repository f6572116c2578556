"""End-to-end sweeps in subprocesses: resume after SIGKILL, shards, errors."""

import atexit
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

from familial_jax.results import ResultsStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(REPO, "experiments", "sweep.py")
DOCS = "/usr/share/doc/linux-doc-6.1/Documentation"
pytestmark = pytest.mark.skipif(
    not os.path.isdir(DOCS),
    reason="default corpus absent: apt-get install linux-doc-6.1")

MICRO = textwrap.dedent(f"""
    import ml_collections

    def get_config():
      c = ml_collections.ConfigDict()
      c.budgets = (4e8, 1.2e9)
      c.granularities = (1, 2)
      c.depths = (2, 3)
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


def _config(tmp_path):
  path = tmp_path / "micro.py"
  path.write_text(MICRO)
  return str(path)


# Every sweep process of the session shares one compilation cache, as users
# share one between workdirs (JAX_COMPILATION_CACHE_DIR; train.enable_compilation_cache):
# each shape compiles once per session, not once per process (a micro point
# here: 9.4 s cold, 3.5 s with the cache).
CACHE = tempfile.mkdtemp(prefix="familial_jax-tests-jax-cache-")
atexit.register(shutil.rmtree, CACHE, ignore_errors=True)


def sweep_env() -> dict:
  return dict(os.environ, XLA_FLAGS="", JAX_COMPILATION_CACHE_DIR=CACHE)


def _sweep(config, workdir, *extra, env=None, **kw):
  env = sweep_env() if env is None else env
  return subprocess.Popen(
      [sys.executable, SWEEP, f"--config={config}", f"--workdir={workdir}",
       "--skip_fit", *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, env=env, **kw)


def _losses(workdir):
  return {r["point_id"]: r["exit_losses"]
          for r in ResultsStore(str(workdir)).records()}


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
  """The micro sweep's workdir, run whole in one process."""
  tmp = tmp_path_factory.mktemp("baseline")
  proc = _sweep(_config(tmp), tmp / "run")
  out = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, out[-3000:]
  assert len(_losses(tmp / "run")) == 8
  # The plan's compute per point is what the trainer counted for its run.
  for r in ResultsStore(str(tmp / "run")).records():
    assert r["C"] == r["planned_compute"] == r["D"] * r["train_flops_per_token"]
    assert abs(r["C"] - r["budget"]) <= 0.5 * r["train_flops_per_token"] * 128
  return tmp / "run"


@pytest.fixture(scope="module")
def baseline(baseline_run):
  return _losses(baseline_run)


def test_sigkill_midway_then_rerun_equals_uninterrupted(tmp_path, baseline):
  config, workdir = _config(tmp_path), tmp_path / "run"
  proc = _sweep(config, workdir)
  done = 0
  for line in proc.stdout:
    done += line.startswith("done ")
    if done == 3:
      os.kill(proc.pid, signal.SIGKILL)
      break
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert len(_losses(workdir)) == 3
  rerun = _sweep(config, workdir)
  out = rerun.communicate(timeout=600)[0]
  assert rerun.returncode == 0, out[-3000:]
  assert "3 already done, 5 to run" in out
  assert _losses(workdir) == baseline  # bitwise equal losses


def test_sigterm_at_any_moment_keeps_the_point_in_hand(tmp_path, baseline):
  """SIGTERM after a point's last step lets it finish and record; SIGTERM
  before its first step checkpoints it after one; either way the sweep exits
  143 without starting another point, and the checkpointed point resumes to
  the uninterrupted sweep's losses."""
  config = _config(tmp_path)
  proc = _sweep(config, tmp_path / "late")
  last = None
  for line in proc.stdout:
    if line.startswith("[1/8]"):
      last = f" step {line.split('steps=')[1].split()[0]}/"
    elif last and last in line:  # the first point's final step is done
      proc.send_signal(signal.SIGTERM)
      break
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 143, out[-3000:]
  assert len(_losses(tmp_path / "late")) == 1
  proc = _sweep(config, tmp_path / "early")
  for line in proc.stdout:
    if line.startswith("[1/8]"):  # setup and compilation are ahead
      first = line.split()[1].rstrip(":")
      proc.send_signal(signal.SIGTERM)
      break
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 143, out[-3000:]
  assert "(SIGTERM); checkpoint saved" in out
  assert not _losses(tmp_path / "early")
  rerun = _sweep(config, tmp_path / "early", f"--point={first}")
  out = rerun.communicate(timeout=600)[0]
  assert rerun.returncode == 0, out[-3000:]
  assert "resumed from step 1" in out
  assert _losses(tmp_path / "early") == {first: baseline[first]}


def test_two_shards_equal_one_run(tmp_path, baseline):
  config, workdir = _config(tmp_path), tmp_path / "run"
  procs = [_sweep(config, workdir, f"--shard_index={i}", "--num_shards=2")
           for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
    assert "4 points, 0 already done, 4 to run" in out
  assert _losses(workdir) == baseline


def test_local_shards_equal_one_run(tmp_path, baseline):
  """--local_shards=2 starts both shard processes itself and waits."""
  config, workdir = _config(tmp_path), tmp_path / "run"
  proc = _sweep(config, workdir, "--local_shards=2")
  out = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, out[-3000:]
  assert out.count("4 points, 0 already done, 4 to run") == 2
  assert "local shards finished with exit codes [0, 0]" in out
  assert _losses(workdir) == baseline
  bad = _sweep(config, workdir, "--local_shards=2", "--num_shards=2")
  out = bad.communicate(timeout=600)[0]
  assert bad.returncode != 0 and "do not combine it" in out
  assert "Traceback" not in out


def two_host_sweep(mesh):
  """One point (G = 2, d_model 64, 2 layers), 10 steps of 16 x 32 tokens."""
  from familial_jax import flops, isoflop
  from familial_jax.config import DataConfig
  return isoflop.SweepConfig(
      budgets=(4e9,), granularities=(2,), depths=(2,),
      ladder=flops.ShapeLadder(vocab_size=256, seq_len=32, aspect_ratio=32.0,
                               head_dim=16),
      batch_size=16, min_steps=4, eval_windows=32, mesh_shape=mesh,
      data=DataConfig(path=f"{DOCS}/process", val_fraction=0.1))


def test_two_hosts_agree_on_a_notice_one_of_them_got(tmp_path):
  """Two localhost processes with 4 CPU devices each run a one-point sweep on
  a (2, 2, 2) mesh, as the hosts of a pod. SIGTERM reaches only the second,
  at step 4 of 10: both must stop there with one checkpoint (a host that
  stopped alone waited forever in the checkpoint's collectives for the other,
  which went on training: it did before), the rerun must finish the point,
  and its record must equal a one-device run's."""
  import json
  import socket
  from familial_jax import sweep as sweep_lib
  worker = os.path.join(os.path.dirname(__file__), "two_host_worker.py")
  env = {k: v for k, v in sweep_env().items() if k != "XLA_FLAGS"}

  def launch(sigterm_at=None):  # {process: step}
    with socket.socket() as s:
      s.bind(("localhost", 0))
      port = s.getsockname()[1]
    procs = [subprocess.Popen(
        [sys.executable, worker, str(pid), str(port), str(tmp_path / "pod"),
         *[str(step) for p, step in (sigterm_at or {}).items() if p == pid]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for pid in range(2)]
    try:
      outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
      for p in procs:
        p.kill()
    for p, out in zip(procs, outputs):
      assert p.returncode == 0, out[-3000:]
    return [json.loads(next(l for l in out.splitlines()
                            if l.startswith("OUT "))[4:]) for out in outputs
            ], outputs

  point = "C4e+09-G2-L2"
  stopped, outputs = launch({1: 4})  # process 1 alone: SIGTERM after step 4
  assert stopped == [{"planned": 1, "preempted": True, "complete": False,
                      "ran": 0}] * 2
  # Progress lines from process 0 only.
  assert " step 4/10 " in outputs[0] and " step " not in outputs[1]
  assert os.listdir(tmp_path / "pod" / "runs" / point / "checkpoints") == ["4"]
  assert launch()[0] == [{"planned": 1, "ran": 1, "skipped": 0,
                          "complete": True}] * 2
  base = sweep_lib.run(two_host_sweep((1, 1, 1)), str(tmp_path / "one"),
                       fit=False, log=lambda s: None)
  assert base["complete"]
  got, want = (ResultsStore(str(tmp_path / d)).read(point)
               for d in ("pod", "one"))
  np.testing.assert_allclose(got["exit_losses"], want["exit_losses"],
                             rtol=1e-5, atol=1e-5)
  steps = {h["step"]: h["exit_losses"] for h in want["train_history"]}
  # The whole history, both sittings (the first's saved with checkpoint 4).
  assert [h["step"] for h in got["train_history"]] == [2, 4, 6, 8, 10]
  for h in got["train_history"]:
    np.testing.assert_allclose(h["exit_losses"], steps[h["step"]], rtol=1e-5,
                               atol=1e-5)


def test_collect_trains_nothing_and_writes_the_recorded_points(
    tmp_path, baseline_run):
  """--collect writes plan.json and the CSV of the records it finds (here 3
  of 8, copied from the baseline) without training: no runs/, no fit while
  points are missing; it refuses --point."""
  config, workdir = _config(tmp_path), tmp_path / "w"
  (workdir / "results").mkdir(parents=True)
  ids = sorted(_losses(baseline_run))[::3]
  for i in ids:
    shutil.copy(baseline_run / "results" / f"{i}.json", workdir / "results")
  proc = _sweep(config, workdir, "--collect", "--skip_fit=false")
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, out[-3000:]
  assert "collecting: 3 of 8 points have records; training none" in out
  assert "3/8 points done; fit and figures wait for the rest" in out
  with open(workdir / "results.csv") as f:
    got = list(csv.DictReader(f))
  want = ResultsStore(str(baseline_run)).rows(ids)
  assert [r["point_id"] for r in got] == [r["point_id"] for r in want]
  assert [float(r["loss"]) for r in got] == [r["loss"] for r in want]
  with open(workdir / "plan.json") as f:
    assert len(json.load(f)["points"]) == 8
  assert sorted(os.listdir(workdir)) == ["plan.json", "results", "results.csv"]
  proc = _sweep(config, workdir, "--collect", f"--point={ids[0]}")
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
  assert "--collect trains nothing" in out


def test_bad_input_fails_before_training(tmp_path):
  config = tmp_path / "small.py"
  config.write_text(MICRO.replace("c.budgets = (4e8, 1.2e9)",
                                  "c.budgets = (1e3,)"))
  proc = _sweep(str(config), tmp_path / "a")
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode != 0 and "plans no point" in out
  assert "Traceback" not in out and not (tmp_path / "a" / "runs").exists()
  config.write_text(MICRO.replace("c.depths = (2, 3)", "c.depths = ()"))
  proc = _sweep(str(config), tmp_path / "b")
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode != 0 and "depths is empty" in out
  proc = _sweep(str(tmp_path / "no_such_preset.py"), tmp_path / "c")
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode != 0 and "no_such_preset" in out


def test_dry_run_shows_the_plan_and_each_shards_shapes(tmp_path):
  """Also: a dry run starts no JAX backend (one beside a running GPU sweep
  would take most of the GPU's memory); here no backend could start."""
  proc = _sweep(_config(tmp_path), tmp_path / "w", "--dry_run",
                "--local_shards=2", env=dict(sweep_env(), JAX_PLATFORMS="none"))
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, out[-3000:]
  assert "8 points" in out and not (tmp_path / "w").exists()
  rows = out[out.index("shard "):].splitlines()[1:3]
  # 4 shapes (G 1, 2 x 2, 3 layers), 2 budgets each: 2 whole shapes a shard.
  assert [r.split()[:3] for r in rows] == [["0", "2", "4"], ["1", "2", "4"]]
  # Shard flags are checked when parsed, dry run included (before, a dry
  # run printed the plan for --num_shards=0 or --shard_index=5).
  for bad, message in [
      (["--num_shards=0"], "0 is not a positive integer"),
      (["--shard_index=-1"], "-1 is not a non-negative integer"),
      (["--local_shards=-2"], "-2 is not a non-negative integer"),
      (["--shard_index=2", "--num_shards=2"],
       "--shard_index must be less than --num_shards")]:
    proc = _sweep(_config(tmp_path), tmp_path / "w", "--dry_run", *bad,
                  env=dict(sweep_env(), JAX_PLATFORMS="none"))
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0 and message in out, (bad, out[-3000:])
    assert "Traceback" not in out and "points" not in out


def test_config_overrides_any_field_and_name_a_missing_one(tmp_path):
  """The presets start from every SweepConfig field, so --config.FIELD
  overrides any of them (here a filter tiny_cpu does not set); a field no
  config has is a one-line error, not ml_collections' stack trace."""
  preset = os.path.join(REPO, "experiments", "configs", "tiny_cpu.py")
  proc = _sweep(preset, tmp_path / "w", "--dry_run",
                "--config.max_tokens_per_param=5.0")
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, out[-3000:]
  assert "34 points" in out  # of 36
  assert "dropped C1.35e+11-G1-L4: D/N = 6.7 outside [0.0, 5.0]" in out
  # Fields whose default is None (the data's path) take a string too.
  proc = _sweep(preset, tmp_path / "w", "--dry_run",
                f"--config.data.path={DOCS}/process",
                "--config.data.val_fraction=0.1")
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0 and "36 points" in out, out[-3000:]
  assert "corpus not readable" not in out
  for bad in ("--config.min_token_per_param=1", "--config.ladder.seq=64"):
    proc = _sweep(preset, tmp_path / "w", "--dry_run", bad)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
    assert out.strip().splitlines()[-1].startswith(
        f"sweep: error: the config file has no field "
        f"{bad.split('=')[0].split('.')[-1]!r}")
  assert not (tmp_path / "w").exists()


def test_a_record_of_another_plan_is_refused(tmp_path):
  """Point ids name budget, G and depth, not the ladder: a workdir holding a
  record of another plan under a planned id stops the sweep with one line
  before anything trains, instead of the record standing in for the model."""
  config = _config(tmp_path)
  store = ResultsStore(str(tmp_path / "w"))
  store.write({"point_id": "C4e+08-G1-L2", "exit_losses": [3.0], "N": 1234, "N_g": [1234],
               "D": 5678, "C": 4e8, "G": 1, "budget": 4e8, "seed": 0,
               "versions": {}, "corpus": {}, "config": {"model": {}}})
  proc = _sweep(config, tmp_path / "w")  # a planned id: else it would train
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
  assert "is from another plan: it holds (N, D, G) = (1234, 5678, 1)" in out
  assert not (tmp_path / "w" / "runs").exists()
