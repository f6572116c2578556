r"""Sweep throughput: grouped (vmapped) training against points one by one.

Runs one small IsoFLOP sweep of small models twice, each in a fresh process
with an empty workdir and compilation cache, so compilation, data loading,
checkpoints and evaluation are all included:
  one_by_one   group_size = 1: every point is its own program and run;
  grouped      group_size = number of budgets: the points of one model shape
               across budgets train together in one vmapped program
               (`train.run_group`).
Prints the wall time, the model FLOP/s (the planned training FLOPs of all
points, every exit counted, over the wall time; the grouped path's padding
steps are not counted as useful work), the ratio, and the largest difference
between the two paths' validation losses (the same runs, so it should be
float noise).

  python benchmarks/sweep_throughput.py --output=benchmarks/results/sweep_throughput_h100.json
"""

import dataclasses
import datetime
import json
import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags
import jax

from familial_jax import flops
from familial_jax import isoflop

_OUTPUT = flags.DEFINE_string("output", None, "JSON record of the run.")
_SMALL = flags.DEFINE_bool("small", False, "CPU-sized sweep.")
_MODES = flags.DEFINE_list("modes", ["grouped", "one_by_one"],
                           "Which paths to run.")


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


_CHILD = r"""
import json, sys, time
from familial_jax import isoflop, sweep
cfg = isoflop.sweep_from_dict(json.loads(sys.argv[1]))
t = time.perf_counter()
out = sweep.run(cfg, sys.argv[2], fit=False, log=lambda s: None)
wall = time.perf_counter() - t
from familial_jax.results import ResultsStore
rows = {r["point_id"]: r["exit_losses"] for r in ResultsStore(sys.argv[2]).records()}
print("RESULT " + json.dumps({"wall": wall, "out": out, "losses": rows}))
"""


def run_mode(sweep: isoflop.SweepConfig, group_size: int) -> dict:
  cfg = dataclasses.replace(sweep, group_size=group_size)
  d = dataclasses.asdict(cfg)
  with tempfile.TemporaryDirectory() as workdir:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(d, default=list), workdir],
        capture_output=True, text=True, check=False)
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not line:
    raise RuntimeError(f"group_size={group_size} failed:\n{proc.stderr[-3000:]}")
  return json.loads(line[0][len("RESULT "):])


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
  results = {}
  for mode in _MODES.value:
    size = 1 if mode == "one_by_one" else len(sweep.budgets)
    r = run_mode(sweep, size)
    r["model_flops_per_second"] = useful / r["wall"]
    results[mode] = r
    print(f"{mode:<11} {r['wall']:8.1f} s  {r['model_flops_per_second']:.3e} "
          f"model FLOP/s  ({r['out']['ran']} points run)")
  record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "device": device.device_kind, "jax": jax.__version__,
            "sweep": dataclasses.asdict(sweep), "points": len(points),
            "planned_flops": useful, "grouped_flops_over_planned":
            padded / useful,
            **{m: {k: v for k, v in r.items() if k != "losses"}
               for m, r in results.items()}}
  if len(results) == 2:
    a, b = results["grouped"], results["one_by_one"]
    diff = max(abs(x - y) for pid in a["losses"] for x, y in zip(
        a["losses"][pid], b["losses"][pid]))
    record["speedup"] = a["model_flops_per_second"] / b[
        "model_flops_per_second"]
    record["max_abs_loss_difference"] = diff
    print(f"grouped / one_by_one model FLOP/s: {record['speedup']:.2f}x; "
          f"max |validation loss difference| {diff:.2e}")
  if _OUTPUT.value:
    os.makedirs(os.path.dirname(_OUTPUT.value) or ".", exist_ok=True)
    with open(_OUTPUT.value, "w") as f:
      json.dump(record, f, indent=1, default=str)
    print("wrote", _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
