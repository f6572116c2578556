r"""Law-fit speed: familial_jax against a scipy L-BFGS-B loop, in one run.

Fits the Chinchilla data (Epoch's extraction, 5 highest-loss points dropped,
D = C / (6N)) over the same 4,500-start Besiroglu et al. grid with
  (1) familial_jax.laws.fit, backends "jaxopt" and "optax", in fresh
      processes so that compilation is included in the time;
  (2) scipy.optimize.minimize(method="L-BFGS-B") from every grid start, with
      numerical gradients as in the Besiroglu et al. notebook ("scipy-fd"),
      and with an analytic numpy gradient ("scipy-jac"), a stronger baseline.
Prints both objectives, times and their ratios, and writes a JSON record.

  python benchmarks/fit_speed.py --output=benchmarks/results/fit_speed_cpu.json
"""

import datetime
import json
import os
import platform
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np
from scipy import optimize
from scipy import special

_DATA = flags.DEFINE_string(
    "data", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                         "reference_data", "chinchilla_epoch_svg_extracted.csv"),
    "Epoch's Chinchilla extraction.")
_STRIDE = flags.DEFINE_integer(
    "scipy_stride", 1, "Run scipy from every k-th grid start only (k > 1 "
    "extrapolates its time to the whole grid; 1 runs the whole grid).")
_OUTPUT = flags.DEFINE_string("output", None, "JSON record of the run.")

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from familial_jax import laws
table = {k: np.asarray(v) for k, v in json.loads(sys.stdin.read()).items()}
t1 = time.perf_counter()
r = laws.fit(table, "chinchilla", backend=sys.argv[1])
t2 = time.perf_counter()
r2 = laws.fit(table, "chinchilla", backend=sys.argv[1])
t3 = time.perf_counter()
print(json.dumps({"objective": r.objective, "params": r.params,
                  "seconds": t2 - t1, "warm_seconds": t3 - t2,
                  "import_seconds": t1 - t0}))
"""


def scipy_loop(table, grid, with_jac):
  """Besiroglu et al.'s recipe: L-BFGS-B from every start, keep the best."""
  ln, ld, ll = (np.log(table[k]) for k in ("params", "tokens", "loss"))

  def objective(p):
    e, a, b, alpha, beta = p
    t = np.stack([np.full_like(ln, e), a - alpha * ln, b - beta * ld])
    m = t.max(0)
    ex = np.exp(t - m)
    s = ex.sum(0)
    r = m + np.log(s) - ll
    value = np.sum(special.huber(1e-3, r))
    if not with_jac:
      return value
    dr = np.clip(r, -1e-3, 1e-3)
    sm = ex / s
    grad = np.array([np.sum(dr * sm[0]), np.sum(dr * sm[1]),
                     np.sum(dr * sm[2]), -np.sum(dr * sm[1] * ln),
                     -np.sum(dr * sm[2] * ld)])
    return value, grad

  best = (np.inf, None)
  start = time.perf_counter()
  for p0 in grid:
    res = optimize.minimize(objective, p0, method="L-BFGS-B", jac=with_jac)
    if np.isfinite(res.fun) and res.fun < best[0]:
      best = (float(res.fun), res.x)
  return best, time.perf_counter() - start


def run_library(table, backend):
  payload = json.dumps({k: v.tolist() for k, v in table.items()})
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-c", _CHILD, backend], input=payload,
                        capture_output=True, text=True, check=True)
  wall = time.perf_counter() - start
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  out["process_seconds"] = wall
  return out


def main(argv):
  del argv
  from familial_jax import laws  # only for the grid; fits run in children
  import jax
  table = laws.table.load_epoch_chinchilla(_DATA.value)
  grid = laws.besiroglu_grid(laws.get_form("chinchilla"))
  sub = grid[::_STRIDE.value]
  scale = len(grid) / len(sub)
  record = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} cores",
            "versions": {"jax": jax.__version__, "numpy": np.__version__,
                         "scipy": __import__("scipy").__version__},
            "grid_starts": len(grid), "scipy_starts_run": len(sub),
            "points": len(table["loss"]), "rows": {}}
  for backend in ("jaxopt", "optax"):
    r = run_library(table, backend)
    record["rows"][f"familial_jax-{backend}"] = {
        "objective": r["objective"], "seconds": r["seconds"],
        "warm_seconds": r["warm_seconds"], "params": r["params"]}
  for name, jac in (("scipy-fd", False), ("scipy-jac", True)):
    (value, x), seconds = scipy_loop(table, sub, jac)
    record["rows"][name] = {"objective": value, "seconds": seconds * scale,
                            "measured_seconds": seconds}
  rows = record["rows"]
  print(f"Chinchilla data: {record['points']} points, {len(grid)} grid starts; "
        f"{record['machine']}")
  print(f"{'method':<22}{'objective':>22}{'seconds':>10}{'warm s':>9}")
  for name, r in rows.items():
    warm = f"{r['warm_seconds']:9.3f}" if "warm_seconds" in r else " " * 9
    print(f"{name:<22}{r['objective']:>22.15g}{r['seconds']:>10.2f}{warm}")
  print("ratios (scipy time / familial_jax time, compile included; "
        "objective difference):")
  for lib in ("familial_jax-jaxopt", "familial_jax-optax"):
    for ref in ("scipy-fd", "scipy-jac"):
      ratio = rows[ref]["seconds"] / rows[lib]["seconds"]
      diff = rows[lib]["objective"] - rows[ref]["objective"]
      record.setdefault("ratios", {})[f"{ref}/{lib}"] = ratio
      warm = rows[ref]["seconds"] / rows[lib]["warm_seconds"]
      record["ratios"][f"{ref}/{lib}-warm"] = warm
      print(f"  {ref:>9} / {lib:<20} {ratio:8.1f}x  (already compiled: "
            f"{warm:6.0f}x)   objective diff {diff:+.2e}")
  if _OUTPUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
    with open(_OUTPUT.value, "w") as f:
      json.dump(record, f, indent=2)
    print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
