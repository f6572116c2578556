"""Training: sharded == unsharded, exact resume, one compile, learning, errors."""

import dataclasses
import json
import os
import platform
import shutil

import jax
import numpy as np
import optax
import pytest

import familial_jax
from familial_jax import data, sharding, train
from familial_jax.config import DataConfig, ModelConfig, TrainConfig

DOCS = "/usr/share/doc/linux-doc-6.1/Documentation"
pytestmark = pytest.mark.skipif(
    not os.path.isdir(DOCS),
    reason="default corpus absent: apt-get install linux-doc-6.1")

SMALL = TrainConfig(
    model=ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4,
                      d_ff=128, max_seq_len=32).with_uniform_exits(2),
    data=DataConfig(path=os.path.join(DOCS, "process"), val_fraction=0.1),
    seq_len=32, batch_size=16, steps=4, warmup_steps=1, log_every=1,
    eval_windows=32, mesh_shape=(1, 1, 1))

quiet = dict(log=lambda s: None)


def _losses(record):
  return np.array([h["exit_losses"] for h in record["train_history"]] +
                  [record["exit_losses"]])


def test_sharded_training_equals_one_device(tmp_path):
  assert len(jax.devices()) == 8
  base = train.run(SMALL, str(tmp_path / "one"), **quiet)
  for mesh in [(8, 1, 1), (1, 8, 1), (2, 2, 2)]:
    cfg = dataclasses.replace(SMALL, mesh_shape=mesh)
    record = train.run(cfg, str(tmp_path / "x".join(map(str, mesh))), **quiet)
    diff = np.abs(_losses(record) - _losses(base)).max()
    print(mesh, "max |loss difference|", diff)
    np.testing.assert_allclose(_losses(record), _losses(base), rtol=1e-5,
                               atol=1e-5)
  # The meshes really shard: fsdp splits the embedding, tensor the MLP.
  trainer = train.build(SMALL, sharding.make_mesh((1, 4, 2)))
  spec = trainer.state_sharding.params
  assert tuple(spec["embed"]["embedding"].spec) == ("tensor", "fsdp")
  assert tuple(spec["blocks_0"]["mlp"]["wi_gate"]["kernel"].spec) == (
      "fsdp", "tensor")


def test_exact_resume_is_bitwise(tmp_path):
  cfg = dataclasses.replace(SMALL, steps=6, checkpoint_every=0, eval_every=2)
  full = train.run(cfg, str(tmp_path / "full"), **quiet)
  stopped = train.run(cfg, str(tmp_path / "resumed"), stop_after=3, **quiet)
  assert stopped == {"stopped_at": 3, "preempted": False}
  logs = []
  resumed = train.run(cfg, str(tmp_path / "resumed"), log=logs.append)
  assert "resumed from step 3" in logs
  np.testing.assert_array_equal(resumed["exit_losses"], full["exit_losses"])
  # The whole loss history, the steps before the stop included (saved with
  # the checkpoint; before, a resumed record began after the stop).
  assert resumed["train_history"] == full["train_history"]
  assert [h["step"] for h in full["train_history"]] == list(range(1, 7))
  assert [h["step"] for h in full["eval_history"]] == [2, 4]
  assert resumed["eval_history"] == full["eval_history"]
  # Parameters: restore both final checkpoints and compare bitwise.
  import orbax.checkpoint as ocp
  trees = []
  for name in ("full", "resumed"):
    with ocp.StandardCheckpointer() as ckpt:
      trees.append(ckpt.restore(str(tmp_path / name / "checkpoints" / "6" /
                                    "state")))
  for a, b in zip(jax.tree.leaves(trees[0]), jax.tree.leaves(trees[1])):
    np.testing.assert_array_equal(a, b)


def test_train_step_compiles_once():
  mesh = sharding.make_mesh((2, 2, 2))
  trainer = train.build(SMALL, mesh)
  state = trainer.init(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  schedule = train.schedule_array(SMALL)
  for _ in range(4):
    batch = rng.integers(0, 256, (16, 33), dtype=np.int32)
    state, _ = trainer.step(state, sharding.global_batch(batch, mesh),
                            schedule)
  assert trainer.step._cache_size() == 1
  assert int(state.step) == 4


def test_runs_of_different_length_share_one_program():
  """The schedule is an input, so IsoFLOP points of one shape share a compile."""
  mesh = sharding.make_mesh((1, 1, 1))
  texts = []
  for steps in (10, 1000):
    cfg = dataclasses.replace(SMALL, steps=steps, warmup_steps=steps // 10)
    trainer = train.build(cfg, mesh)
    state = jax.eval_shape(trainer.init, jax.random.PRNGKey(0))
    batch = jax.ShapeDtypeStruct((16, 33), np.int32)
    texts.append(trainer.step.lower(state, batch,
                                    train.schedule_array(cfg)).as_text())
  assert texts[0] == texts[1]


def test_bfloat16_logits_train_close_and_evaluate_in_float32(tmp_path):
  """loss_logits_dtype="bfloat16" changes a step's losses by bf16 rounding of
  the logits only; validation of the same parameters is float32 either way.
  A workdir written before the field existed resumes as its default."""
  mesh = sharding.make_mesh((1, 1, 1))
  bf16 = dataclasses.replace(SMALL, loss_logits_dtype="bfloat16")
  trainers = [train.build(c, mesh) for c in (SMALL, bf16)]
  batch = np.random.default_rng(0).integers(0, 256, (16, 33), dtype=np.int32)
  out = []
  for t in trainers:
    state = t.init(jax.random.PRNGKey(0))
    out.append((np.asarray(t.evaluate(state.params, batch)),
                np.asarray(t.step(state, batch,
                                  train.schedule_array(SMALL))[1][
                                      "exit_losses"])))
  (eval32, step32), (eval16, step16) = out
  np.testing.assert_array_equal(eval16, eval32)
  np.testing.assert_allclose(step32, eval32, rtol=1e-6)  # same params, f32
  assert 0 < np.abs(step16 - step32).max() < 1e-3 * step32.min()
  with pytest.raises(ValueError, match="loss_logits_dtype must be"):
    dataclasses.replace(SMALL, loss_logits_dtype="float16")
  old = SMALL.to_dict()
  del old["loss_logits_dtype"]
  os.makedirs(tmp_path / "old")
  (tmp_path / "old" / "config.json").write_text(json.dumps(old))
  train._check_workdir(str(tmp_path / "old"), [SMALL])  # no error
  with pytest.raises(ValueError, match="loss_logits_dtype"):
    train._check_workdir(str(tmp_path / "old"), [bf16])


def test_learning_rate_matches_optax_schedule():
  cfg = dataclasses.replace(SMALL, steps=100, warmup_steps=10,
                            learning_rate=2e-3, min_lr_ratio=0.1)
  ref = optax.warmup_cosine_decay_schedule(0.0, 2e-3, 10, 100, 2e-4)
  sched = train.schedule_array(cfg)
  for step in (0, 1, 5, 10, 11, 50, 99, 100, 120):
    assert float(train.learning_rate(step, sched)) == pytest.approx(
        float(ref(step)), rel=1e-5, abs=1e-9)


def test_learns_below_a_data_derived_threshold(tmp_path):
  """A few hundred CPU steps beat the best previous-token-only predictor."""
  cfg = TrainConfig(
      model=ModelConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=4,
                        d_ff=256, max_seq_len=64).with_uniform_exits(2),
      seq_len=64, batch_size=16, steps=300, warmup_steps=20, log_every=50,
      eval_windows=256, mesh_shape=(1, 1, 1))
  record = train.run(cfg, str(tmp_path), **quiet)
  train_stream, _ = data.token_streams(data.default_corpus(), 0.02)
  unigram = data.unigram_entropy(train_stream)
  bigram = data.bigram_entropy(train_stream)
  print(f"unigram {unigram:.3f} bigram {bigram:.3f} exits "
        f"{record['exit_losses']}")
  assert record["unigram_entropy"] == pytest.approx(unigram)
  assert max(record["exit_losses"]) < bigram < unigram - 0.5
  # The result record carries everything a scaling-law fit needs.
  for key in ("N", "N_g", "D", "C", "G", "seed", "versions", "corpus",
              "tokenizer", "wall_seconds", "finished_utc"):
    assert key in record
  assert record["D"] == 300 * 16 * 64
  assert record["corpus"]["sha256"] == data.default_corpus().sha256
  assert record["versions"]["familial_jax"] == familial_jax.__version__
  # ... and the machine it ran on (losses differ in the last bits across
  # processors), as /proc/cpuinfo and JAX name it.
  assert record["host"]["device_kind"] == jax.devices()[0].device_kind
  assert record["host"]["cpu_count"] == os.cpu_count()
  with open("/proc/cpuinfo") as f:
    lines = f.read().splitlines()
  field = lambda *names: next(
      l for l in lines if l.split(":")[0].strip() in names).split(
          ":", 1)[1].split()
  if platform.machine() == "x86_64":  # ARM's /proc/cpuinfo names no model
    assert record["host"]["cpu"] == " ".join(field("model name"))
  # AVX2 and ASIMD: on every x86-64 and ARM64 processor of these years.
  baseline = {"x86_64": "avx2", "aarch64": "asimd"}.get(platform.machine())
  if baseline:
    assert baseline in record["host"]["cpu_isa"]
  assert set(record["host"]["cpu_isa"]) <= set(field("flags", "Features"))
  # The phases split the wall time (the rest: writing the record).
  timing = record["timing"]
  assert set(timing) == {"setup", "first_step", "steps", "eval", "checkpoint"}
  assert all(v > 0 for v in timing.values())
  assert 0.9 * record["wall_seconds"] < sum(timing.values()) <= record[
      "wall_seconds"]


def test_bad_input_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="longer than the model's max_seq_len"):
    dataclasses.replace(SMALL, seq_len=64)
  with pytest.raises(ValueError, match="not divisible by the data-parallel"):
    train.build(dataclasses.replace(SMALL, batch_size=12),
                sharding.make_mesh((8, 1, 1)))
  with pytest.raises(ValueError, match="matches no file"):
    train.run(dataclasses.replace(SMALL, data=DataConfig(
        source="files", path=str(tmp_path / "none*.txt"))), str(tmp_path / "a"),
              **quiet)
  train.run(SMALL, str(tmp_path / "w"), **quiet)
  with pytest.raises(ValueError, match="holds a run of another config"):
    train.run(dataclasses.replace(SMALL, learning_rate=1e-3),
              str(tmp_path / "w"), **quiet)
  with pytest.raises(ValueError, match="needs 16 devices"):
    sharding.make_mesh((4, 4, 1))


def test_sigkill_after_a_checkpoint_resumes_bitwise(tmp_path):
  """The train binary killed with SIGKILL once checkpoint 3 is on disk."""
  import json
  import signal
  import subprocess
  import sys
  import time
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = os.path.join(repo, "experiments", "configs", "train_tiny.py")
  flags = ["--config.model.d_model=64", "--config.model.d_ff=128",
           "--config.seq_len=32", "--config.batch_size=8", "--config.steps=8",
           "--config.warmup_steps=1", "--config.checkpoint_every=3",
           "--config.eval_every=0", "--config.eval_windows=16",
           "--config.log_every=1", "--config.mesh_shape=(1,1,1)",
           f"--config.data.path={DOCS}/process", "--config.data.val_fraction=0.1"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}

  def train_cmd(workdir):
    return [sys.executable, os.path.join(repo, "experiments", "train.py"),
            f"--config={config}", f"--workdir={workdir}", *flags]

  full = subprocess.run(train_cmd(tmp_path / "full"), capture_output=True,
                        text=True, env=env, timeout=300)
  assert full.returncode == 0, full.stderr[-2000:]
  killed = subprocess.Popen(train_cmd(tmp_path / "killed"),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
  ckpt = tmp_path / "killed" / "checkpoints" / "3"
  deadline = time.time() + 300
  while not ckpt.exists() and killed.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert ckpt.exists()
  resumed = subprocess.run(train_cmd(tmp_path / "killed"), capture_output=True,
                           text=True, env=env, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from step" in resumed.stdout
  # The resume could load the killed run's compiled programs from here.
  assert any((tmp_path / "killed" / "jax_cache").iterdir())
  a, b = (json.loads((tmp_path / n / "result.json").read_text())
          for n in ("full", "killed"))
  assert a["exit_losses"] == b["exit_losses"]
  assert a["train_history"][-1] == b["train_history"][-1]


@pytest.mark.parametrize("damage", ["truncate", "remove_metadata"])
def test_corrupted_latest_checkpoint_falls_back_to_previous(tmp_path, damage):
  cfg = dataclasses.replace(SMALL, steps=6, checkpoint_every=2,
                            keep_checkpoints=3)
  full = train.run(cfg, str(tmp_path / "full"), **quiet)
  train.run(cfg, str(tmp_path / "hurt"), stop_after=4, **quiet)
  step4 = tmp_path / "hurt" / "checkpoints" / "4"
  if damage == "truncate":
    files = [p for p in step4.rglob("*") if p.is_file() and "state" in str(p)]
    victim = max(files, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:victim.stat().st_size // 2])
  else:
    for p in step4.rglob("*"):
      if p.is_file() and "METADATA" in p.name.upper():
        p.unlink()
  logs = []
  with pytest.warns(UserWarning, match="unreadable"):
    resumed = train.run(cfg, str(tmp_path / "hurt"), log=logs.append)
  assert "resumed from step 2" in logs
  np.testing.assert_array_equal(resumed["exit_losses"], full["exit_losses"])


def test_sigterm_saves_a_checkpoint_before_exit(tmp_path):
  import signal
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, os.path.join(repo, "experiments", "train.py"),
         f"--config={os.path.join(repo, 'experiments', 'configs', 'train_tiny.py')}",
         f"--workdir={tmp_path / 'run'}", "--config.model.d_model=64",
         "--config.model.d_ff=128", "--config.seq_len=32",
         "--config.batch_size=8", "--config.steps=400",
         "--config.warmup_steps=1", "--config.checkpoint_every=0",
         "--config.eval_every=0", "--config.eval_windows=16",
         "--config.log_every=1", "--config.mesh_shape=(1,1,1)",
         f"--config.data.path={DOCS}/process", "--config.data.val_fraction=0.1"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env)
  for line in proc.stdout:
    if line.startswith("step 5/"):
      proc.send_signal(signal.SIGTERM)
      break
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 143, out[-2000:]
  assert "(SIGTERM); checkpoint saved" in out
  steps = [int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
           if p.name.isdigit()]
  assert steps and 5 <= max(steps) < 400


def test_checkpoint_without_a_history_still_resumes(tmp_path):
  """A run of an older version (here: its checkpoint's history item and its
  config's eval_sample removed) resumes bitwise: the checkpoint without a
  history says that the record's history starts after its step, and the
  config without eval_sample is the first windows it used (another
  validation set is refused)."""
  cfg = dataclasses.replace(SMALL, steps=6, checkpoint_every=0,
                            data=dataclasses.replace(SMALL.data,
                                                     eval_sample="first"))
  full = train.run(cfg, str(tmp_path / "full"), **quiet)
  train.run(cfg, str(tmp_path / "old"), stop_after=3, **quiet)
  item = tmp_path / "old" / "checkpoints" / "3" / "history"
  assert item.is_dir()
  shutil.rmtree(item)
  saved = json.loads((tmp_path / "old" / "config.json").read_text())
  del saved["data"]["eval_sample"]
  (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
  with pytest.raises(ValueError, match=r"another config \(differs in "
                     r"\['data'\]\)"):
    train.run(dataclasses.replace(cfg, data=SMALL.data),
              str(tmp_path / "old"), **quiet)
  logs = []
  resumed = train.run(cfg, str(tmp_path / "old"), log=logs.append)
  assert "this checkpoint has no loss history: the record's histories start " \
         "after step 3" in logs
  np.testing.assert_array_equal(resumed["exit_losses"], full["exit_losses"])
  assert resumed["train_history"] == full["train_history"][3:]


def test_group_training_equals_separate_runs(tmp_path):
  """Three runs of one shape and different lengths in one vmapped program
  give each run's own losses; a stop and resume of the group changes
  nothing."""
  cfgs = [dataclasses.replace(SMALL, steps=s, warmup_steps=w, learning_rate=lr)
          for s, w, lr in [(3, 1, 3e-3), (6, 2, 3e-3), (5, 1, 1e-3)]]
  alone = [train.run(c, str(tmp_path / f"alone{i}"), **quiet)
           for i, c in enumerate(cfgs)]
  stopped = train.run_group(cfgs, str(tmp_path / "group"), stop_after=4,
                            **quiet)
  assert stopped == {"stopped_at": 4, "preempted": False}
  group = train.run_group(cfgs, str(tmp_path / "group"), **quiet)
  assert len(group) == 3
  for a, g in zip(alone, group):
    assert g["steps"] == a["steps"] and g["D"] == a["D"] and g["C"] == a["C"]
    # The whole history: before the stop (saved with the checkpoint) and
    # after the resume.
    assert ([h["step"] for h in g["train_history"]] ==
            [h["step"] for h in a["train_history"]] ==
            list(range(1, a["steps"] + 1)))
    np.testing.assert_allclose([h["exit_losses"] for h in g["train_history"]],
                               [h["exit_losses"] for h in a["train_history"]],
                               rtol=2e-5)
    np.testing.assert_allclose(g["exit_losses"], a["exit_losses"], rtol=2e-5)
  with pytest.raises(ValueError, match="differs from member 0 in .'seed'"):
    train.run_group([SMALL, dataclasses.replace(SMALL, seed=1)],
                    str(tmp_path / "bad"), **quiet)
  with pytest.raises(ValueError, match="another config"):
    train.run_group(cfgs[:2], str(tmp_path / "group"), **quiet)


def test_compilation_cache_is_the_users_or_the_workdirs(tmp_path):
  names = ("jax_compilation_cache_dir",
           "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  before = {n: getattr(jax.config, n) for n in names}
  try:
    jax.config.update("jax_compilation_cache_dir", None)
    assert train.enable_compilation_cache(str(tmp_path)) == str(
        tmp_path / "jax_cache")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax_cache")
    jax.config.update("jax_compilation_cache_dir", "/shared/cache")
    assert train.enable_compilation_cache(str(tmp_path)) == "/shared/cache"
    assert jax.config.jax_compilation_cache_dir == "/shared/cache"
  finally:
    for n, v in before.items():
      jax.config.update(n, v)
