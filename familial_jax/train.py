"""Training a familial model: state, steps, checkpoints and the run loop.

`run(config, workdir)` reads top to bottom:
  1. data      - corpus -> train/validation token streams -> grain iterator
  2. mesh      - (data, fsdp, tensor) mesh and shardings from logical axes
  3. state     - sharded init, or restore of the latest orbax checkpoint
                 (params, optimizer state, step and the data iterator state)
  4. loop      - jitted train_step (compiled once), progress lines, periodic
                 validation and checkpoints
  5. result    - every exit's validation loss, N, N_g, D, C, G, wall time,
                 versions, seed and the corpus hash, written atomically as
                 workdir/result.json

Family loss = sum_g w_g * L_g with L_g the mean next-token cross-entropy of
exit g (nats/token) and w_g = 1/G by default.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import os
import platform
import signal
import threading
import time
import warnings
from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct

from familial_jax import data as data_lib
from familial_jax import flops
from familial_jax import sharding
from familial_jax.config import DataConfig, TrainConfig
from familial_jax.model import FamilialLM
from familial_jax.results import atomic_write


class TrainState(struct.PyTreeNode):
  """Step, parameters and optimizer state (a pytree; shardable, saveable)."""

  step: jax.Array
  params: Any
  opt_state: Any


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """Gradient clipping, then AdamW whose learning rate `train_step` sets.

  The learning rate is injected as state rather than baked into the program,
  so runs that differ only in length (the points of one shape across IsoFLOP
  budgets) share one compiled step (and the persistent compilation cache).
  """
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip),
      optax.inject_hyperparams(optax.adamw)(
          learning_rate=0.0, b1=cfg.b1, b2=cfg.b2,
          weight_decay=cfg.weight_decay))


def schedule_array(cfg: TrainConfig) -> np.ndarray:
  """[peak, warmup_steps, total_steps, final] of the learning-rate schedule."""
  return np.array([cfg.learning_rate, cfg.warmup_steps, cfg.steps,
                   cfg.learning_rate * cfg.min_lr_ratio], np.float32)


def learning_rate(step, schedule):
  """Linear warmup from 0, then cosine decay to `final` at `total_steps`
  (optax.warmup_cosine_decay_schedule with decay_steps = total_steps)."""
  peak, warmup, total, final = (schedule[i] for i in range(4))
  step = jnp.asarray(step, jnp.float32)
  warm = peak * step / jnp.maximum(warmup, 1.0)
  progress = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0, 1)
  decay = final + (peak - final) * 0.5 * (1 + jnp.cos(jnp.pi * progress))
  return jnp.where(step < warmup, warm, decay)


def exit_losses(params, model: FamilialLM, batch: jax.Array) -> jax.Array:
  """Mean next-token cross-entropy of every exit, [G] float32.

  Args:
    batch: [B, T + 1] int tokens; inputs are batch[:, :-1], targets [:, 1:].
  """
  inputs, targets = batch[:, :-1], batch[:, 1:]
  logits = model.apply({"params": params}, inputs)  # G x [B, T, V]
  return jnp.stack([
      optax.softmax_cross_entropy_with_integer_labels(l, targets).mean()
      for l in logits])


def train_step(state: TrainState, batch: jax.Array, schedule: jax.Array, *,
               model: FamilialLM, tx: optax.GradientTransformation,
               weights: jax.Array) -> tuple[TrainState, dict]:
  """One AdamW step on the weighted family loss.

  Args:
    state: the train state.
    batch: [B, T + 1] tokens.
    schedule: `schedule_array(cfg)`.
  """

  def loss_fn(params):
    losses = exit_losses(params, model, batch)
    return jnp.dot(weights, losses), losses

  (loss, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  lr = learning_rate(state.step, schedule)
  clip_state, adam_state = state.opt_state
  hyper = dict(adam_state.hyperparams,
               learning_rate=lr.astype(adam_state.hyperparams[
                   "learning_rate"].dtype))
  adam_state = adam_state._replace(hyperparams=hyper)
  updates, opt_state = tx.update(grads, (clip_state, adam_state),
                                 state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "exit_losses": losses, "learning_rate": lr,
             "grad_norm": optax.tree.norm(grads)}
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state), metrics


def eval_step(params, batch: jax.Array, *, model: FamilialLM) -> jax.Array:
  """Every exit's mean validation loss on one batch, [G]."""
  return exit_losses(params, model, batch)


@dataclasses.dataclass
class Trainer:
  """Compiled functions and shardings for one config on one mesh."""

  cfg: TrainConfig
  mesh: jax.sharding.Mesh
  model: FamilialLM
  tx: optax.GradientTransformation
  state_sharding: Any
  init: Callable
  step: Callable
  evaluate: Callable


def build(cfg: TrainConfig, mesh: jax.sharding.Mesh) -> Trainer:
  """Builds the model, optimizer, shardings and jitted functions."""
  dp = sharding.data_parallel_size(mesh)
  if cfg.batch_size % dp:
    raise ValueError(
        f"TrainConfig.batch_size={cfg.batch_size} is not divisible by the "
        f"data-parallel size data * fsdp = {dp} of mesh {dict(mesh.shape)}; "
        f"use a multiple of {dp}.")
  model = FamilialLM(cfg.model)
  tx = make_optimizer(cfg)
  dummy = jnp.zeros((1, cfg.seq_len), jnp.int32)

  def init_boxed(rng):
    params = model.init(rng, dummy)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params))

  with nn.logical_axis_rules(sharding.RULES):
    abstract = jax.eval_shape(init_boxed, jax.random.PRNGKey(0))
    state_sharding = sharding.logical_sharding(mesh, abstract)
  init = jax.jit(lambda rng: nn.unbox(init_boxed(rng)),
                 out_shardings=state_sharding)
  weights = jnp.asarray(cfg.weights, jnp.float32)
  batch_sh = sharding.batch_sharding(mesh)

  def step_fn(state, batch, schedule):
    with nn.logical_axis_rules(sharding.RULES):
      return train_step(state, batch, schedule, model=model, tx=tx,
                        weights=weights)

  def eval_fn(params, batch):
    with nn.logical_axis_rules(sharding.RULES):
      return eval_step(params, batch, model=model)

  step = jax.jit(step_fn, in_shardings=(state_sharding, batch_sh,
                                        sharding.replicated(mesh)),
                 out_shardings=(state_sharding, sharding.replicated(mesh)),
                 donate_argnums=0)
  evaluate = jax.jit(eval_fn, in_shardings=(state_sharding.params, batch_sh),
                     out_shardings=sharding.replicated(mesh))
  return Trainer(cfg, mesh, model, tx, state_sharding, init, step, evaluate)


class Data(NamedTuple):
  """A loaded corpus: token streams plus what every result records of it."""

  train: np.ndarray
  validation: np.ndarray
  corpus_info: dict  # name, documents, bytes, sha256
  unigram_entropy: float  # of the training stream, nats/token


@functools.lru_cache(maxsize=2)
def load_data(d: DataConfig) -> Data:
  """Loads, splits and describes a corpus once per DataConfig, so that the
  points of a sweep neither reread nor rehash it."""
  corpus = load_corpus(d)
  train, validation = data_lib.token_streams(corpus, d.val_fraction)
  return Data(train, validation, corpus.describe(),
              data_lib.unigram_entropy(train))


def load_corpus(d: DataConfig) -> data_lib.Corpus:
  """The corpus a DataConfig names."""
  if d.source == "default":
    return data_lib.default_corpus(d.path)
  if d.source == "files":
    return data_lib.files_corpus(d.path)
  return data_lib.tfds_corpus(d.tfds_name, d.tfds_split, d.tfds_data_dir,
                              d.text_key)


def _versions() -> dict:
  import grain
  return {"python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": importlib.metadata.version("jaxlib"),
          "flax": flax.__version__,
          "optax": optax.__version__, "orbax": ocp.__version__,
          "grain": getattr(grain, "__version__", "?"),
          "numpy": np.__version__}


# Fields that may change between a run and its resumption.
_CADENCE = ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints")


def _check_workdir(workdir: str, cfg: TrainConfig) -> None:
  """Refuses a workdir that holds a run of another config."""
  path = os.path.join(workdir, "config.json")
  mine = {k: v for k, v in cfg.to_dict().items() if k not in _CADENCE}
  if os.path.exists(path):
    with open(path) as f:
      theirs = {k: v for k, v in json.load(f).items() if k not in _CADENCE}
    if theirs != json.loads(json.dumps(mine)):
      diff = sorted(k for k in set(mine) | set(theirs)
                    if json.loads(json.dumps(mine.get(k))) != theirs.get(k))
      raise ValueError(
          f"workdir {workdir} holds a run of another config (differs in "
          f"{diff}); use a new workdir or the same config.")
    return
  os.makedirs(workdir, exist_ok=True)
  atomic_write(path, json.dumps(mine, indent=2))


def _evaluate(trainer: Trainer, params, val: np.ndarray) -> np.ndarray:
  """Mean loss of every exit over the fixed validation windows."""
  b = trainer.cfg.batch_size
  n = (len(val) // b) * b
  if n == 0:
    raise ValueError(
        f"the validation set has {len(val)} windows, fewer than one batch of "
        f"{b}; raise eval_windows or val_fraction.")
  pid, pcount = jax.process_index(), jax.process_count()
  rows = b // pcount
  total = 0
  for i in range(0, n, b):
    local = val[i + pid * rows:i + (pid + 1) * rows]
    total = total + np.asarray(trainer.evaluate(
        params, sharding.global_batch(local, trainer.mesh)))
  return total / (n // b)


class _PreemptionFlag:
  """Sets `.set` on SIGTERM (main thread only) until `restore()`."""

  def __init__(self):
    self.set = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.set = True

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def _restore_latest_good(manager, trainer: Trainer, iterator, log):
  """Restores the newest readable checkpoint, or returns None if there is none.

  A checkpoint that fails to restore (a truncated file, missing metadata) is
  reported, moved aside to `<step>.corrupt` and the previous one is tried.
  """
  abstract = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      jax.eval_shape(trainer.init, jax.random.PRNGKey(0)),
      trainer.state_sharding)
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract),
          data=ocp.args.JsonRestore()))
      iterator.set_state(restored["data"])
    except Exception as e:  # pylint: disable=broad-except
      path = os.path.join(str(manager.directory), str(step))
      warnings.warn(f"checkpoint {path} is unreadable ({type(e).__name__}: "
                    f"{str(e)[:200]}); falling back to the previous one")
      log(f"WARNING: checkpoint at step {step} is unreadable; trying the "
          "previous one")
      if jax.process_index() == 0 and os.path.isdir(path):
        os.replace(path, f"{path}.corrupt")
      manager.reload()
      continue
    log(f"resumed from step {step}")
    return restored["state"]
  return None


def run(cfg: TrainConfig, workdir: str, *, log: Callable[[str], None] = print,
        stop_after: int | None = None) -> dict:
  """Trains (or resumes) one familial model and returns its result record.

  Args:
    cfg: the run's config.
    workdir: checkpoints, config.json and result.json live here.
    log: progress sink.
    stop_after: stop (after checkpointing) once this step is reached, as a
      preempted job would; used to test exact resumption.

  Returns:
    The result record (also written to workdir/result.json when finished).
  """
  start = time.time()
  # 1. data
  tokenizer = data_lib.ByteTokenizer()
  if cfg.model.vocab_size < tokenizer.vocab_size:
    raise ValueError(
        f"ModelConfig.vocab_size={cfg.model.vocab_size} is smaller than the "
        f"byte tokenizer's {tokenizer.vocab_size}.")
  data = load_data(cfg.data)
  train_stream, val_stream = data.train, data.validation
  val = data_lib.validation_windows(val_stream, cfg.seq_len, cfg.eval_windows)
  dataset = data_lib.train_dataset(train_stream, cfg.seq_len, cfg.batch_size,
                                   cfg.seed, jax.process_index(),
                                   jax.process_count())
  # 2. mesh
  mesh = sharding.make_mesh(cfg.mesh_shape)
  trainer = build(cfg, mesh)
  _check_workdir(workdir, cfg)
  # 3. state
  manager = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=cfg.keep_checkpoints))
  iterator = iter(dataset)
  state = _restore_latest_good(manager, trainer, iterator, log)
  if state is None:
    state = trainer.init(jax.random.PRNGKey(cfg.seed))

  def save(step):
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(iterator.get_state())), force=True)
    manager.wait_until_finished()

  # 4. loop (SIGTERM, the usual preemption notice, checkpoints and stops)
  preempted = _PreemptionFlag()
  tokens_per_step = cfg.batch_size * cfg.seq_len
  fpt = flops.flops_per_token(cfg.model, cfg.seq_len)
  schedule = schedule_array(cfg)
  history, evals = [], []
  step = int(state.step)
  t_loop, first_step = time.time(), step
  while step < cfg.steps:
    batch = sharding.global_batch(next(iterator), mesh)
    state, metrics = trainer.step(state, batch, schedule)
    step += 1
    if step % cfg.log_every == 0 or step == cfg.steps:
      m = jax.device_get(metrics)
      history.append({"step": step, "loss": float(m["loss"]),
                      "exit_losses": [float(x) for x in m["exit_losses"]]})
      rate = (step - first_step) * tokens_per_step / (time.time() - t_loop)
      eta = (cfg.steps - step) * tokens_per_step / max(rate, 1e-9)
      exits = " ".join(f"{x:.3f}" for x in m["exit_losses"])
      log(f"step {step}/{cfg.steps} loss {m['loss']:.4f} exits [{exits}] "
          f"{rate:,.0f} tok/s ETA {eta:.0f}s")
    if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
      evals.append({"step": step, "exit_losses": _evaluate(
          trainer, state.params, val).tolist()})
    stop = step < cfg.steps and (preempted.set or (
        stop_after is not None and step >= stop_after))
    if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or stop:
      save(step)
    if stop:
      preempted.restore()
      log(f"stopping after step {step} "
          f"({'SIGTERM' if preempted.set else 'stop_after'}); checkpoint saved")
      return {"stopped_at": step, "preempted": preempted.set}
  preempted.restore()
  # 5. result
  val_losses = _evaluate(trainer, state.params, val)
  if manager.latest_step() != step:
    save(step)
  record = {
      "config": cfg.to_dict(),
      "exit_losses": val_losses.tolist(),
      "family_loss": float(np.mean(val_losses)),
      "weighted_loss": float(np.dot(cfg.weights, val_losses)),
      "G": cfg.model.granularity,
      "exit_layers": list(cfg.model.exit_layers),
      "N": flops.non_embedding_params(cfg.model),
      "N_total": flops.total_params(cfg.model),
      "N_g": list(flops.exit_non_embedding_params(cfg.model)),
      "D": cfg.tokens,
      "C": cfg.tokens * fpt.train,
      "train_flops_per_token": fpt.train,
      "steps": cfg.steps,
      "seed": cfg.seed,
      "train_history": history,
      "eval_history": evals,
      "validation_tokens": int((len(val) // cfg.batch_size) * cfg.batch_size
                               * cfg.seq_len),
      "corpus": data.corpus_info,
      "tokenizer": tokenizer.spec(),
      "unigram_entropy": data.unigram_entropy,
      "versions": _versions(),
      "devices": [str(d) for d in jax.devices()],
      "mesh": dict(mesh.shape),
      "wall_seconds": time.time() - start,
  }
  if jax.process_index() == 0:
    atomic_write(os.path.join(workdir, "result.json"),
                 json.dumps(record, indent=2))
  return record
