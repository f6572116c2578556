r"""Host time per training step: the training loop against a bare jitted step.

The small models of a sweep leave an accelerator idle between steps unless
the host keeps up: whatever the loop does around `trainer.step` (drawing the
batch from grain, placing it, logging, fault and preemption checks) is paid
on every step. This measures it where the device's own work is negligible
(a 1-layer, d_model 32 model on 2 x 16 tokens), so what remains is host time:
  bare        `trainer.step` in a Python loop on one device-resident batch;
  loop        `train.run` (the real loop: grain, prefetch thread, logging),
              its `timing["steps"]` over its steps, with the pipeline's read
              options (`pipeline.READ_OPTIONS`: no grain threads);
  loop_grain_default
              the same with grain's default read options (a 16-thread pool
              reading 500 batches ahead), as before this benchmark;
and, for the data alone, one `next()` of the training iterator under each
read option. Prints the per-step milliseconds and the ratios.

  python benchmarks/host_overhead.py --output=benchmarks/results/host_overhead_cpu.json
"""

import contextlib
import datetime
import json
import os
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import grain
import jax
import numpy as np

from familial_jax import sharding
from familial_jax import train
from familial_jax.config import ModelConfig, TrainConfig
from familial_jax.data import pipeline

_OUTPUT = flags.DEFINE_string("output", None, "JSON record of the run.")
_STEPS = flags.DEFINE_integer("steps", 2000, "Steps per measurement.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Measurements per path (the "
                                "median is reported).")

MODEL = ModelConfig(vocab_size=256, d_model=32, n_layers=1, n_heads=1,
                    d_ff=64, max_seq_len=16, exit_layers=(1,))


def bare_ms(cfg: TrainConfig) -> float:
  mesh = sharding.make_mesh(cfg.mesh_shape)
  trainer = train.build(cfg, mesh)
  state = trainer.init(jax.random.PRNGKey(0))
  batch = sharding.global_batch(
      np.zeros((cfg.batch_size, cfg.seq_len + 1), np.int32), mesh)
  schedule = train.schedule_array(cfg)
  for _ in range(3):
    state, _ = trainer.step(state, batch, schedule)
  jax.block_until_ready(state)
  t = time.perf_counter()
  for _ in range(cfg.steps):
    state, _ = trainer.step(state, batch, schedule)
  jax.block_until_ready(state)
  return (time.perf_counter() - t) / cfg.steps * 1e3


@contextlib.contextmanager
def read_options(options: grain.ReadOptions):
  """The training pipeline with other grain read options, for a comparison."""
  saved, pipeline.READ_OPTIONS = pipeline.READ_OPTIONS, options
  try:
    yield
  finally:
    pipeline.READ_OPTIONS = saved


def loop_ms(cfg: TrainConfig, options: grain.ReadOptions) -> float:
  with read_options(options), tempfile.TemporaryDirectory() as workdir:
    record = train.run(cfg, workdir, log=lambda s: None)
  return record["timing"]["steps"] / cfg.steps * 1e3


def next_ms(cfg: TrainConfig, options: grain.ReadOptions) -> float:
  stream = train.load_data(cfg.data).train
  with read_options(options):
    it = iter(pipeline.train_dataset(stream, cfg.seq_len, cfg.batch_size,
                                     cfg.seed))
  next(it)
  t = time.perf_counter()
  for _ in range(cfg.steps):
    next(it)
  return (time.perf_counter() - t) / cfg.steps * 1e3


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # quiet orbax's per-save lines
  cfg = TrainConfig(model=MODEL, seq_len=16, batch_size=2, steps=_STEPS.value,
                    warmup_steps=10, log_every=max(1, _STEPS.value // 10))
  default = grain.ReadOptions()
  paths = {
      "bare": lambda: bare_ms(cfg),
      "loop": lambda: loop_ms(cfg, pipeline.READ_OPTIONS),
      "loop_grain_default": lambda: loop_ms(cfg, default),
      "next": lambda: next_ms(cfg, pipeline.READ_OPTIONS),
      "next_grain_default": lambda: next_ms(cfg, default),
  }
  ms = {}
  for name, f in paths.items():
    f()  # compile, load the corpus, warm up
    ms[name] = float(np.median([f() for _ in range(_REPEATS.value)]))
    print(f"{name:<20} {ms[name]:7.3f} ms per step", flush=True)
  ratios = {
      "loop_overhead_ms": ms["loop"] - ms["bare"],
      "loop_grain_default_overhead_ms": ms["loop_grain_default"] - ms["bare"],
      "grain_default_over_loop": ms["loop_grain_default"] / ms["loop"],
      "next_grain_default_over_next": ms["next_grain_default"] / ms["next"],
  }
  print(f"host time the loop adds per step: {ratios['loop_overhead_ms']:.3f} "
        f"ms, with grain's default read options "
        f"{ratios['loop_grain_default_overhead_ms']:.3f} ms; loop step "
        f"{ratios['grain_default_over_loop']:.2f}x faster, one batch "
        f"{ratios['next_grain_default_over_next']:.1f}x faster without "
        "grain's threads")
  if _OUTPUT.value:
    device = jax.devices()[0]
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "device": device.device_kind, "platform": device.platform,
        "host_cpus": os.cpu_count(), "versions": train.versions(),
        "config": cfg.to_dict(), "repeats": _REPEATS.value,
        "read_options": str(pipeline.READ_OPTIONS),
        "ms_per_step": ms, **ratios}
    os.makedirs(os.path.dirname(_OUTPUT.value) or ".", exist_ok=True)
    with open(_OUTPUT.value, "w") as f:
      json.dump(record, f, indent=1, default=str)
    print("wrote", _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
