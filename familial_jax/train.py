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
from typing import Any, Callable, NamedTuple, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from familial_jax import data as data_lib
from familial_jax import faults
from familial_jax import flops
from familial_jax import losses
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


def exit_losses(params, model: FamilialLM, batch: jax.Array,
                loss_chunk: int = 0,
                logits_dtype: str = "float32") -> jax.Array:
  """Mean next-token cross-entropy of every exit, [G] float32.

  Never holds more than one chunk of one exit's logits
  (`losses.chunked_cross_entropy`).

  Args:
    batch: [B, T + 1] int tokens; inputs are batch[:, :-1], targets [:, 1:].
    loss_chunk: tokens per loss chunk (0: automatic).
    logits_dtype: storage dtype of each chunk's logits (float32, bfloat16).
  """
  inputs, targets = batch[:, :-1], batch[:, 1:]
  features = model.apply({"params": params}, inputs,
                         method=FamilialLM.features)  # G x [B, T, D]
  return jnp.stack([
      losses.chunked_cross_entropy(h, model.unembedding(params, g), targets,
                                   loss_chunk, logits_dtype)
      for g, h in enumerate(features)])


def train_step(state: TrainState, batch: jax.Array, schedule: jax.Array, *,
               model: FamilialLM, tx: optax.GradientTransformation,
               weights: jax.Array, loss_chunk: int = 0,
               logits_dtype: str = "float32") -> tuple[TrainState, dict]:
  """One AdamW step on the weighted family loss.

  Args:
    state: the train state.
    batch: [B, T + 1] tokens.
    schedule: `schedule_array(cfg)`.
  """

  def loss_fn(params):
    per_exit = exit_losses(params, model, batch, loss_chunk, logits_dtype)
    return jnp.dot(weights, per_exit), per_exit

  (loss, per_exit), grads = jax.value_and_grad(loss_fn, has_aux=True)(
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
  metrics = {"loss": loss, "exit_losses": per_exit, "learning_rate": lr,
             "grad_norm": optax.tree.norm(grads)}
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state), metrics


def eval_step(params, batch: jax.Array, *, model: FamilialLM,
              loss_chunk: int = 0) -> jax.Array:
  """Every exit's mean validation loss on one batch, [G]."""
  return exit_losses(params, model, batch, loss_chunk)


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


def build(cfg: TrainConfig, mesh: jax.sharding.Mesh,
          members: int = 1) -> Trainer:
  """Builds the model, optimizer, shardings and jitted functions.

  With `members` = K > 1 the functions train K copies of the model at once
  (one vmapped program; see `run_group`): the state gains a leading [K] axis,
  `step` takes schedules [K, 4] and one shared batch, freezes each member
  once its step count reaches its schedule's total, and `evaluate` returns
  [K, G].
  """
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
  weights = jnp.asarray(cfg.weights, jnp.float32)
  batch_sh = sharding.batch_sharding(mesh)

  def one_step(state, batch, schedule):
    with nn.logical_axis_rules(sharding.RULES):
      return train_step(state, batch, schedule, model=model, tx=tx,
                        weights=weights, loss_chunk=cfg.loss_chunk,
                        logits_dtype=cfg.loss_logits_dtype)

  def one_eval(params, batch):
    with nn.logical_axis_rules(sharding.RULES):
      return eval_step(params, batch, model=model, loss_chunk=cfg.loss_chunk)

  def init_one(rng):
    return nn.unbox(init_boxed(rng))

  if members == 1:
    init_fn, step_fn, eval_fn = init_one, one_step, one_eval
  else:
    state_sharding = jax.tree.map(
        lambda s: NamedSharding(mesh, P(None, *s.spec)), state_sharding)

    def init_fn(rng):  # every member starts from the same seed's init
      return jax.tree.map(
          lambda x: jnp.broadcast_to(x, (members,) + x.shape), init_one(rng))

    def member_step(state, batch, schedule):
      new, metrics = one_step(state, batch, schedule)
      active = state.step < schedule[2]
      return jax.tree.map(lambda n, o: jnp.where(active, n, o), new,
                          state), metrics

    step_fn = jax.vmap(member_step, in_axes=(0, None, 0))
    eval_fn = jax.vmap(one_eval, in_axes=(0, None))
  init = jax.jit(init_fn, out_shardings=state_sharding)
  step = jax.jit(step_fn, in_shardings=(state_sharding, batch_sh,
                                        sharding.replicated(mesh)),
                 out_shardings=(state_sharding, sharding.replicated(mesh)),
                 donate_argnums=0)
  evaluate = jax.jit(eval_fn, in_shardings=(state_sharding.params, batch_sh),
                     out_shardings=sharding.replicated(mesh))
  return Trainer(cfg, mesh, model, tx, state_sharding, init, step, evaluate)


def enable_compilation_cache(workdir: str) -> str:
  """Persistent XLA compilation cache for every program of this process, so
  a rerun (a resume, the points of a sweep) loads what it compiled before.

  The directory is the one the user gave JAX (JAX_COMPILATION_CACHE_DIR or
  jax.config), else workdir/jax_cache. Runs of the same shapes in different
  workdirs share programs through one such directory; copying a cache does not
  work, because JAX's keys include the directory's own path (its GPU
  autotuning cache lives there). JAX opens its cache once per process, so the
  first run of a process fixes the directory for the later ones.

  Returns:
    The directory.
  """
  directory = (jax.config.jax_compilation_cache_dir or
               os.path.join(workdir, "jax_cache"))
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory


_TRAINERS: dict = {}


def _trainer_for(cfg: TrainConfig, mesh: jax.sharding.Mesh,
                 members: int) -> Trainer:
  """`build`, reused across runs that differ only in what `build` ignores
  (length, schedule, seed, data, cadence): the IsoFLOP points of one shape in
  a sweep then share jitted functions, so they neither retrace nor reload
  compiled programs."""
  key = (cfg.model, cfg.seq_len, cfg.batch_size, cfg.grad_clip, cfg.b1,
         cfg.b2, cfg.weight_decay, cfg.weights, cfg.loss_chunk,
         cfg.loss_logits_dtype, mesh, members)
  if key not in _TRAINERS:
    if len(_TRAINERS) >= 8:
      _TRAINERS.pop(next(iter(_TRAINERS)))
    _TRAINERS[key] = build(cfg, mesh, members)
  return _TRAINERS[key]


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


def versions() -> dict:
  """Versions of Python and the stack, as every result records them."""
  import grain
  import familial_jax
  return {"familial_jax": familial_jax.__version__,
          "python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": importlib.metadata.version("jaxlib"),
          "flax": flax.__version__,
          "optax": optax.__version__, "orbax": ocp.__version__,
          "grain": getattr(grain, "__version__", "?"),
          "numpy": np.__version__}


def host() -> dict:
  """The machine a result was computed on. Records of one config and seed are
  bit for bit equal on one machine and can differ across processors: XLA
  compiles for the host's instruction set (say AVX-512 or not), which can
  change the rounding of float reductions, and training amplifies it."""
  cpu, flags = platform.processor() or platform.machine(), set()
  try:
    with open("/proc/cpuinfo") as f:
      info = dict(line.split(":", 1) for line in f if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    cpu = " ".join(info.get("model name", cpu).split())
    # x86 lists its extensions as "flags", ARM as "Features".
    flags = set(info.get("flags", info.get("Features", "")).split())
  except (OSError, ValueError):
    pass
  return {"cpu": cpu, "cpu_count": os.cpu_count(),
          "machine": platform.machine(),
          # The vector extensions that XLA's CPU code generation uses.
          "cpu_isa": [x for x in _ISA if x in flags],
          "device_kind": jax.devices()[0].device_kind}


_ISA = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
        "avx512_vnni", "avx512_bf16", "amx_bf16", "asimd", "sve")


# Fields that may change between a run and its resumption.
_CADENCE = ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints")


def _check_workdir(workdir: str, cfgs: Sequence[TrainConfig]) -> None:
  """Refuses a workdir that holds a run of another config (or group)."""
  path = os.path.join(workdir, "config.json")
  # A run started before a field existed ran with that field's default (the
  # one `TrainConfig.from_dict` gives a dict without it, nested ones too).
  def strip(d):
    try:
      d = TrainConfig.from_dict(d).to_dict()
    except (TypeError, ValueError):  # not a config of this version: compared
      d = {**TrainConfig().to_dict(), **d}  # as it is
    d = json.loads(json.dumps(d))
    return {k: v for k, v in d.items() if k not in _CADENCE}

  dicts = [strip(c.to_dict()) for c in cfgs]
  mine = json.loads(json.dumps(dicts[0] if len(dicts) == 1 else
                               {"group": dicts}))
  if os.path.exists(path):
    with open(path) as f:
      theirs = json.load(f)
    if "group" in theirs:
      theirs = {"group": [strip(d) for d in theirs["group"]]}
    else:
      theirs = strip(theirs)
    if theirs != mine:
      if "group" in mine or "group" in theirs:
        diff = ["group"]
      else:
        diff = sorted(k for k in set(mine) | set(theirs)
                      if mine.get(k) != theirs.get(k))
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


class _Prefetcher:
  """Reads and places the next batches on a background thread, so the host
  work of a step (grain, the host-to-device copy) overlaps the device's.

  Yields (device batch, iterator state after that batch); saving the state of
  the last batch consumed makes a checkpoint resume exactly where it stopped.
  """

  def __init__(self, iterator, mesh, depth: int = 2):
    import queue  # pylint: disable=g-import-not-at-top
    self._queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()

    def work():
      try:
        while not self._stop.is_set():
          local = next(iterator)
          item = (sharding.global_batch(local, mesh), iterator.get_state())
          while not self._stop.is_set():
            try:
              self._queue.put(item, timeout=0.1)
              break
            except queue.Full:
              continue
      except Exception as e:  # pylint: disable=broad-except
        self._queue.put(e)

    self._thread = threading.Thread(target=work, daemon=True)
    self._thread.start()

  def next(self):
    item = self._queue.get()
    if isinstance(item, Exception):
      raise item
    return item

  def close(self):
    self._stop.set()
    self._thread.join()


class _PhaseTimer:
  """Wall seconds per named phase: `lap(name)` charges the time since the
  previous lap to `name`."""

  def __init__(self):
    self._last = time.perf_counter()
    self._totals: dict[str, float] = {}

  def lap(self, name: str) -> None:
    now = time.perf_counter()
    self._totals[name] = self._totals.get(name, 0.0) + now - self._last
    self._last = now

  def seconds(self) -> dict:
    return {k: round(v, 4) for k, v in self._totals.items()}


class Preemption:
  """SIGTERM, the usual preemption notice, as a flag.

  While entered (a context manager; main thread only, elsewhere it never
  fires), SIGTERM sets `.requested` instead of ending the process. A run
  checks it after every step (then checkpoints and stops); a sweep holds one
  across its points and checks it before starting the next, so a notice that
  arrives while a point compiles, evaluates or writes its record costs at
  most that point's last step, never the point.

  Those checks go through `agreed()`: on a multi-host run a notice reaches
  the hosts at different moments (or only some of them), and a host that
  stopped alone would wait forever in the checkpoint's collectives for one
  that went on training.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self) -> "Preemption":
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def agreed(self) -> bool:
    """Whether any process of the run has the notice (then `requested` is
    set on every one). With several processes this is a collective: every
    process must call it at the same point of the same loop. On one process
    it only reads the flag; on several it costs one small all-gather per
    call, so per training step, and the host then waits for that step
    before dispatching the next (measured: 4.1 ms per all-gather between two
    localhost CPU processes over gloo; not measured on a pod)."""
    if jax.process_count() > 1:
      self.requested = bool(np.any(multihost_utils.process_allgather(
          np.int32(self.requested))))
    return self.requested


def _restore_latest_good(manager, trainer: Trainer, iterator, log):
  """Restores the newest readable checkpoint: (state, logs), where logs are
  the saved {"train": [...], "eval": [...]} histories up to its step (None
  for a checkpoint written before they were saved); (None, None) if there is
  no checkpoint.

  A checkpoint that fails to restore (a truncated file, missing metadata) is
  reported, moved aside to `<step>.corrupt` and the previous one is tried.
  """
  abstract = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      jax.eval_shape(trainer.init, jax.random.PRNGKey(0)),
      trainer.state_sharding)
  for step in sorted(manager.all_steps(), reverse=True):
    path = os.path.join(str(manager.directory), str(step))
    items = dict(state=ocp.args.StandardRestore(abstract),
                 data=ocp.args.JsonRestore())
    if os.path.isdir(os.path.join(path, "history")):  # older ones lack it
      items["history"] = ocp.args.JsonRestore()
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**items))
      iterator.set_state(restored["data"])
    except Exception as e:  # pylint: disable=broad-except
      warnings.warn(f"checkpoint {path} is unreadable ({type(e).__name__}: "
                    f"{str(e)[:200]}); falling back to the previous one")
      log(f"WARNING: checkpoint at step {step} is unreadable; trying the "
          "previous one")
      if jax.process_index() == 0 and os.path.isdir(path):
        os.replace(path, f"{path}.corrupt")
      manager.reload()
      continue
    log(f"resumed from step {step}")
    if "history" not in items:
      log(f"this checkpoint has no loss history: the record's histories "
          f"start after step {step}")
    return restored["state"], restored.get("history")
  return None, None


# Fields in which the members of one `run_group` may differ: the length and
# learning-rate schedule of each run (the program is the same).
GROUP_FREE = ("steps", "warmup_steps", "learning_rate", "min_lr_ratio",
              "log_every", "checkpoint_every", "eval_every")


def group_key(cfg: TrainConfig) -> dict:
  """What the members of one group must share: the config minus GROUP_FREE."""
  return {k: v for k, v in cfg.to_dict().items() if k not in GROUP_FREE}


def check_group(cfgs: Sequence[TrainConfig]) -> None:
  """Raises ValueError unless the configs can train in one vmapped program."""
  if not cfgs:
    raise ValueError("a group needs at least one TrainConfig.")
  base = group_key(cfgs[0])
  for i, c in enumerate(cfgs[1:], start=1):
    other = group_key(c)
    if other != base:
      diff = sorted(k for k in base if base[k] != other[k])
      raise ValueError(
          f"group member {i} differs from member 0 in {diff}; members may "
          f"differ only in {GROUP_FREE}.")


def run(cfg: TrainConfig, workdir: str, *, log: Callable[[str], None] = print,
        stop_after: int | None = None,
        preemption: Preemption | None = None) -> dict:
  """Trains (or resumes) one familial model and returns its result record.

  Args:
    cfg: the run's config.
    workdir: checkpoints, config.json and result.json live here.
    log: progress sink.
    stop_after: stop (after checkpointing) once this step is reached, as a
      preempted job would; used to test exact resumption.
    preemption: an entered `Preemption` shared with the caller (a sweep);
      default: the run holds its own while it lasts.

  Returns:
    The result record (also written to workdir/result.json when finished),
    or {"stopped_at", "preempted"} when stopped early.
  """
  return _train([cfg], workdir, log=log, stop_after=stop_after,
                preemption=preemption)


def run_group(cfgs: Sequence[TrainConfig], workdir: str, *,
              log: Callable[[str], None] = print,
              stop_after: int | None = None,
              preemption: Preemption | None = None) -> list[dict] | dict:
  """Trains K runs of one shape in one vmapped program.

  The members share everything but their length and learning-rate schedule
  (`GROUP_FREE`): the IsoFLOP points of one model shape across budgets. They
  share the seed, hence the initialisation and the data order, so one batch
  feeds all of them and member k's numbers equal `run(cfgs[k])`'s (up to
  float reassociation). A member stops changing once it has taken its own
  number of steps; the program runs for the longest member. This trades
  FLOPs (K x the longest run) for filling an accelerator that one small model
  leaves idle, and compiles once for K runs; `benchmarks/sweep_throughput.py`
  measures when that pays.

  Args: as `run`, with one config per member.

  Returns:
    The members' result records (also written to workdir/result.json as a
    list), or {"stopped_at", "preempted"} when stopped early.
  """
  check_group(cfgs)
  if len(cfgs) == 1:
    record = run(cfgs[0], workdir, log=log, stop_after=stop_after,
                 preemption=preemption)
    return record if "stopped_at" in record else [record]
  return _train(list(cfgs), workdir, log=log, stop_after=stop_after,
                preemption=preemption)


def _train(cfgs: list[TrainConfig], workdir: str, *,
           log: Callable[[str], None], stop_after: int | None,
           preemption: Preemption | None):
  """`run` (one config) and `run_group` (several)."""
  if preemption is None:
    with Preemption() as own:
      return _train(cfgs, workdir, log=log, stop_after=stop_after,
                    preemption=own)
  start = time.time()
  timing = _PhaseTimer()
  k, base = len(cfgs), cfgs[0]
  # 1. data
  tokenizer = data_lib.ByteTokenizer()
  if base.model.vocab_size < tokenizer.vocab_size:
    raise ValueError(
        f"ModelConfig.vocab_size={base.model.vocab_size} is smaller than the "
        f"byte tokenizer's {tokenizer.vocab_size}.")
  data = load_data(base.data)
  val = data_lib.validation_windows(data.validation, base.seq_len,
                                    base.eval_windows, base.data.eval_sample)
  dataset = data_lib.train_dataset(data.train, base.seq_len, base.batch_size,
                                   base.seed, jax.process_index(),
                                   jax.process_count())
  # 2. mesh
  mesh = sharding.make_mesh(base.mesh_shape)
  trainer = _trainer_for(base, mesh, k)
  _check_workdir(workdir, cfgs)
  # 3. state
  manager = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=base.keep_checkpoints))
  iterator = iter(dataset)
  state, logs = _restore_latest_good(manager, trainer, iterator, log)
  if state is None:
    state = trainer.init(jax.random.PRNGKey(base.seed))
  # The logged losses so far, saved with each checkpoint, so that a resumed
  # run's record holds its whole history (steps redone after the checkpoint
  # are logged again, with the same numbers).
  history, evals = ((logs["train"], logs["eval"]) if logs else
                    ([[] for _ in cfgs], [[] for _ in cfgs]))
  data_state = iterator.get_state()
  jax.block_until_ready(state)
  timing.lap("setup")

  def save(step):
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        history=ocp.args.JsonSave({"train": history, "eval": evals})),
                 force=True)
    faults.reach("checkpoint")
    manager.wait_until_finished()
    timing.lap("checkpoint")

  # 4. loop (SIGTERM, the usual preemption notice, checkpoints and stops)
  tokens_per_step = base.batch_size * base.seq_len
  schedule = (schedule_array(base) if k == 1 else
              np.stack([schedule_array(c) for c in cfgs]))
  total = max(c.steps for c in cfgs)
  every = [c.checkpoint_every for c in cfgs if c.checkpoint_every]
  checkpoint_every = min(every) if every else 0
  step = int(np.max(jax.device_get(state.step)))
  t_loop, first_step = time.time(), step
  batches = _Prefetcher(iterator, mesh)
  try:
    while step < total:
      batch, data_state = batches.next()
      state, metrics = trainer.step(state, batch, schedule)
      if step == first_step:  # compilation (or a cache load) and one step
        jax.block_until_ready(metrics)
        timing.lap("first_step")
      step += 1
      faults.reach("step")
      logging = [i for i, c in enumerate(cfgs) if step <= c.steps and (
          step % c.log_every == 0 or step == c.steps)]
      if logging:
        m = jax.device_get(metrics)
        loss = np.reshape(m["loss"], (k,))
        per_exit = np.reshape(m["exit_losses"], (k, -1))
        for i in logging:
          history[i].append({"step": step, "loss": float(loss[i]),
                             "exit_losses": [float(x) for x in per_exit[i]]})
        rate = (step - first_step) * tokens_per_step / (time.time() - t_loop)
        eta = (total - step) * tokens_per_step / max(rate, 1e-9)
        exits = " ".join(f"{x:.3f}" for x in per_exit[logging[0]])
        who = f" member {logging[0]}" if k > 1 else ""
        log(f"step {step}/{total}{who} loss {loss[logging[0]]:.4f} exits "
            f"[{exits}] {rate:,.0f} tok/s ETA {eta:.0f}s")
      evaluating = [i for i, c in enumerate(cfgs)
                    if c.eval_every and step % c.eval_every == 0 and
                    step < c.steps]
      if evaluating:
        timing.lap("steps")
        now = np.reshape(_evaluate(trainer, state.params, val), (k, -1))
        for i in evaluating:
          evals[i].append({"step": step, "exit_losses": now[i].tolist()})
        timing.lap("eval")
      stop = step < total and (preemption.agreed() or (
          stop_after is not None and step >= stop_after))
      if (checkpoint_every and step % checkpoint_every == 0) or stop:
        timing.lap("steps")
        save(step)
      if stop:
        why = "SIGTERM" if preemption.requested else "stop_after"
        log(f"stopping after step {step} ({why}); checkpoint saved")
        return {"stopped_at": step, "preempted": preemption.requested}
  finally:
    batches.close()
  jax.block_until_ready(state)
  timing.lap("steps")
  # 5. result
  val_losses = np.reshape(_evaluate(trainer, state.params, val), (k, -1))
  timing.lap("eval")
  if manager.latest_step() != step:
    save(step)
  shared = {
      "validation_tokens": int((len(val) // base.batch_size) * base.batch_size
                               * base.seq_len),
      "corpus": data.corpus_info,
      "tokenizer": tokenizer.spec(),
      "unigram_entropy": data.unigram_entropy,
      "versions": versions(),
      "devices": [str(d) for d in jax.devices()],
      "host": host(),
      "mesh": dict(mesh.shape),
      "wall_seconds": time.time() - start,
      # Where this process' wall time went: setup (data, build, init or
      # restore), first_step (compilation + one step), steps, eval,
      # checkpoint. Summed over a resumed run's sittings it is not.
      "timing": timing.seconds(),
      "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  }
  if k > 1:
    shared["group_size"] = k
  records = [dict(_describe(c, val_losses[i]), train_history=history[i],
                  eval_history=evals[i], **shared)
             for i, c in enumerate(cfgs)]
  out = records[0] if k == 1 else records
  if jax.process_index() == 0:
    atomic_write(os.path.join(workdir, "result.json"),
                 json.dumps(out, indent=2))
  return out


def loss_fields(cfg: TrainConfig, val_losses: np.ndarray) -> dict:
  """A result record's losses: every exit's, their mean and the
  exit-weighted family loss."""
  return {"exit_losses": val_losses.tolist(),
          "family_loss": float(np.mean(val_losses)),
          "weighted_loss": float(np.dot(cfg.weights, val_losses))}


def _describe(cfg: TrainConfig, val_losses: np.ndarray) -> dict:
  """What a result record says of one run: config, losses, N, D, C."""
  fpt = flops.flops_per_token(cfg.model, cfg.seq_len)
  return {
      "config": cfg.to_dict(),
      **loss_fields(cfg, val_losses),
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
  }
