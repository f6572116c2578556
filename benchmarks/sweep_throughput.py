r"""Sweep throughput: the fast paths against running points one by one.

Runs one small IsoFLOP sweep several ways, each from a cold start (fresh
processes, empty workdir and compilation cache), so process start-up,
compilation, data loading, checkpoints and evaluation are all included:
  one_by_one       one process; every point is its own run (group_size 1);
  grouped          one process; the points of one model shape across budgets
                   train together in one vmapped program (`train.run_group`);
  sharded          --shards processes on the one accelerator, each running
                   its share of the shapes one by one (`experiments/sweep.py
                   --local_shards`): host work (compilation, checkpoints,
                   Python) overlaps and the accelerator interleaves the
                   programs of several small models;
  grouped_sharded  both.
Prints, per mode, the wall time from launch to the last process' exit, the
model FLOP/s (the planned training FLOPs of all points, every exit counted,
over that wall time; the grouped paths' padding steps are not counted as
useful work), the ratio to one_by_one, where the time went (the records'
per-phase seconds, summed over processes) and the largest difference between
a mode's validation losses and one_by_one's (the same runs: float noise).

  python benchmarks/sweep_throughput.py --output=benchmarks/results/sweep_throughput_h100.json
"""

import collections
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

# This process only reads the device's name: it must not take the
# accelerator's memory from the sweeps it starts (which get the environment
# as it was).
# Each mode starts cold: its sweep caches compiled programs in its own (empty)
# workdir, not in a directory the caller shares through JAX_COMPILATION_CACHE_DIR.
_CHILD_ENV = dict(os.environ)
_CHILD_ENV.pop("JAX_COMPILATION_CACHE_DIR", None)
os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
import jax

from familial_jax import flops
from familial_jax import isoflop
from familial_jax import sweep as sweep_lib
from familial_jax.results import ResultsStore

_OUTPUT = flags.DEFINE_string("output", None, "JSON record of the run.")
_SMALL = flags.DEFINE_bool("small", False, "CPU-sized sweep.")
_MODES = flags.DEFINE_list(
    "modes", ["one_by_one", "grouped", "sharded", "grouped_sharded"],
    "Which paths to run (one_by_one first: the others are compared to it).")
_SHARDS = flags.DEFINE_integer(
    "shards", None,
    "Processes of the sharded modes (default: min(8, CPU cores, model "
    "shapes): a shard compiles its shapes' programs, and with more shards "
    "than shapes some shapes would be compiled twice).")


def small_sweep(gpu: bool, small: bool) -> isoflop.SweepConfig:
  scale = 0.25 if small else 1.0
  return isoflop.SweepConfig(
      budgets=tuple(scale * c for c in (2e11, 3e11, 4.5e11, 7e11, 1e12,
                                        1.5e12)),
      granularities=(1, 2), depths=(2, 3),
      ladder=flops.ShapeLadder(vocab_size=256, seq_len=128, aspect_ratio=32.0,
                               head_dim=32),
      batch_size=32, learning_rate=2e-3, min_steps=10, eval_windows=64,
      compute_dtype="bfloat16" if gpu else "float32",
      attention="cudnn" if gpu else "xla")


MODES = {"one_by_one": (False, False), "grouped": (True, False),
         "sharded": (False, True), "grouped_sharded": (True, True)}

_CHILD = r"""
import json, sys
from familial_jax import isoflop, sweep
cfg = isoflop.sweep_from_dict(json.loads(sys.argv[1]))
sweep.run(cfg, sys.argv[2], shard_index=int(sys.argv[3]),
          num_shards=int(sys.argv[4]), fit=False, log=lambda s: None)
"""


def run_mode(sweep: isoflop.SweepConfig, group_size: int,
             shards: int) -> dict:
  """Runs the sweep in `shards` fresh processes; wall time, losses, phases."""
  cfg = json.dumps(dataclasses.asdict(
      dataclasses.replace(sweep, group_size=group_size)), default=list)
  env = (sweep_lib.local_shard_env(shards, _CHILD_ENV) if shards > 1 else
         _CHILD_ENV)
  with tempfile.TemporaryDirectory() as workdir:
    t = time.perf_counter()
    procs = [subprocess.Popen(
        [sys.executable, "-c", _CHILD, cfg, workdir, str(i), str(shards)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(shards)]
    errors = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - t
    for p, err in zip(procs, errors):
      if p.returncode:
        raise RuntimeError(f"group_size={group_size} shards={shards} failed:"
                           f"\n{err[-3000:]}")
    records = list(ResultsStore(workdir).records())
  phases = collections.Counter()
  for r in records:  # the members of a group share their run's timing
    phases.update({k: v / r.get("group_size", 1)
                   for k, v in r["timing"].items()})
  return {"wall": wall, "points": len(records),
          "phases": {k: round(v, 2) for k, v in phases.items()},
          "losses": {r["point_id"]: r["exit_losses"] for r in records}}


def main(argv):
  del argv
  device = jax.devices()[0]
  sweep = small_sweep(device.platform == "gpu",
                      _SMALL.value or device.platform == "cpu")
  points, dropped = isoflop.plan(sweep)
  useful = sum(p.compute for p in points)
  groups = isoflop.groups(points, len(sweep.budgets))
  # Every member of a group runs as many steps as its longest member.
  padded = sum(p.compute / p.train.steps * max(q.train.steps for q in g)
               for g in groups for p in g)
  print(f"device {device.device_kind}; {len(points)} points "
        f"({len(dropped)} dropped), {len(groups)} shape groups; planned "
        f"{useful:.3e} FLOPs (grouped path computes {padded / useful:.2f}x "
        "that, padding members to their group's longest)")
  shards = _SHARDS.value or min(8, os.cpu_count() or 1,
                                len(isoflop.by_shape(points)))
  bound = step_bound(points, len(sweep.budgets), shards)
  print("steps one by one over the longest chain of steps in a mode (its "
        "ceiling when a step takes the same time whatever its group size and "
        "shards run concurrently, fixed costs aside): " + ", ".join(
            f"{m} {r:.2f}x" for m, r in bound.items()))
  unknown = sorted(set(_MODES.value) - set(MODES))
  if unknown or not _MODES.value:
    raise app.UsageError(f"unknown or no modes {unknown}; known: "
                         f"{sorted(MODES)}.")
  results = {}
  for mode in _MODES.value:
    grouped, sharded = MODES[mode]
    r = run_mode(sweep, len(sweep.budgets) if grouped else 1,
                 shards if sharded else 1)
    r["model_flops_per_second"] = useful / r["wall"]
    results[mode] = r
    print(f"{mode:<15} {r['wall']:8.1f} s  {r['model_flops_per_second']:.3e} "
          f"model FLOP/s  ({r['points']} points)  phases (s, summed over "
          f"processes): {r['phases']}", flush=True)
    # Written after every mode, so a run cut short keeps what it measured.
    record = summarise(results, device, sweep, points, useful, padded,
                       shards)
    record["step_bound_over_one_by_one"] = bound
    if _OUTPUT.value:
      os.makedirs(os.path.dirname(_OUTPUT.value) or ".", exist_ok=True)
      with open(_OUTPUT.value, "w") as f:
        json.dump(record, f, indent=1, default=str)
  for mode, ratio in record.get("speedup_over_one_by_one", {}).items():
    print(f"{mode} / one_by_one model FLOP/s: {ratio:.2f}x; max |validation "
          f"loss difference| {record['max_abs_loss_difference'][mode]:.2e}")
  if _OUTPUT.value:
    print("wrote", _OUTPUT.value)


def step_bound(points, group_size: int, shards: int) -> dict:
  """Per mode: the training steps of all points over the longest chain of
  steps that one process must take one after another (a group takes as many
  steps as its longest member; a shard's groups follow each other).

  This bounds a mode's speedup when small models leave the accelerator
  latency-bound (a vmapped step of K members costs what one member's does),
  shards share it without slowing each other, and fixed costs (start-up,
  compilation, evaluation, checkpoints) vanish. Grouping alone cannot beat
  sum / max of a shape's step counts: with steps in proportion to budgets r
  times apart, below r / (r - 1) (3x for r = 1.5), however many budgets.
  """
  total = sum(p.train.steps for p in points)

  def chain(members, size):
    return sum(max(p.train.steps for p in g)
               for g in isoflop.groups(members, size))

  split = isoflop.shards(points, shards)
  return {"grouped": total / chain(points, group_size),
          "sharded": total / max(chain(s, 1) for s in split),
          "grouped_sharded": total / max(chain(s, group_size) for s in split)}


def summarise(results: dict, device, sweep, points, useful: float,
              padded: float, shards: int) -> dict:
  """The JSON record of the modes run so far, with each one's speedup over
  one_by_one and largest validation-loss difference."""
  record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "device": device.device_kind, "platform": device.platform,
            "jax": jax.__version__, "host_cpus": os.cpu_count(),
            "shards": shards, "sweep": dataclasses.asdict(sweep),
            "points": len(points), "planned_flops": useful,
            "grouped_flops_over_planned": padded / useful,
            "modes_run": list(results),
            **{m: {k: v for k, v in r.items() if k != "losses"}
               for m, r in results.items()}}
  if "one_by_one" in results:
    base = results["one_by_one"]
    record["speedup_over_one_by_one"] = {}
    for mode, r in results.items():
      if mode == "one_by_one":
        continue
      ratio = r["model_flops_per_second"] / base["model_flops_per_second"]
      diff = max(abs(x - y) for pid in base["losses"] for x, y in zip(
          r["losses"][pid], base["losses"][pid]))
      record["speedup_over_one_by_one"][mode] = ratio
      record.setdefault("max_abs_loss_difference", {})[mode] = diff
  return record


if __name__ == "__main__":
  app.run(main)
