"""Running an IsoFLOP sweep end to end: plan -> train -> store -> fit -> figures.

`run(sweep, workdir)` is resumable and shardable:
- a point with a valid record in workdir/results/ is skipped;
- an interrupted point resumes from its orbax checkpoint in workdir/runs/<id>;
- shard i of n runs its share of the plan's model shapes (`isoflop.shard`:
  whole shapes, balanced by planned compute), so the hosts of a pod, a
  cluster's job array or the processes sharing one GPU split the work over
  one workdir and compile each shape once;
- a shard runs its points shape by shape (`isoflop.groups`), so each
  shape's programs are built and traced once per process;
- every record is written atomically; whichever shard finds the plan complete
  writes the aggregate CSV, the fits, the figures and report.md;
- on a multi-host run (a TPU pod: every host trains every point of its
  shard together) the hosts agree on which points remain and on when to stop
  (process 0's view of the records, `train.Preemption.agreed`), and only
  process 0 writes the plan, the records and the fits.
Compiled programs go to a persistent cache (`train.enable_compilation_cache`:
the user's JAX_COMPILATION_CACHE_DIR, else workdir/jax_cache), so reruns and
other processes load them instead of compiling.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable

import jax
from jax.experimental import multihost_utils
import numpy as np

from familial_jax import faults
from familial_jax import isoflop
from familial_jax import plots
from familial_jax import train
from familial_jax.laws import report as report_lib
from familial_jax.results import ResultsStore, atomic_write


def local_shard_env(n: int, environ=None) -> dict:
  """The environment of one of n shard processes sharing this machine's
  accelerator: 0.9 / n of its memory each, unless
  XLA_PYTHON_CLIENT_MEM_FRACTION is set already."""
  env = dict(os.environ if environ is None else environ)
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / n:.3f}")
  return env


def plan(sweep: isoflop.SweepConfig):
  """Plans against the corpus' real training-token count."""
  train_tokens = len(train.load_data(sweep.data).train)
  return isoflop.plan(sweep, train_tokens=train_tokens)


def plan_anywhere(sweep: isoflop.SweepConfig):
  """`plan`, or without the corpus the plan whose epoch limit is unchecked.

  Returns:
    (points, dropped, note): note is "" or says why the limit was unchecked.
  """
  try:
    return (*plan(sweep), "")
  except (FileNotFoundError, ValueError, ImportError) as e:
    return (*isoflop.plan(sweep),
            f"corpus not readable here, epoch limit not checked: {e}")


def dry_run(sweep: isoflop.SweepConfig, num_shards: int = 1) -> str:
  """The plan as a table, and with num_shards > 1 what each shard runs.
  Works without the corpus (the epoch limit is then not checked, and the
  table says so)."""
  points, dropped, note = plan_anywhere(sweep)
  text = isoflop.format_plan(sweep, points, dropped)
  if num_shards > 1:
    text += "\n" + isoflop.format_shards(sweep, points, num_shards)
  return text + (f"\n({note})" if note else "")


def run(sweep: isoflop.SweepConfig, workdir: str, *, shard_index: int = 0,
        num_shards: int = 1, only: str | None = None, collect: bool = False,
        fit: bool = True, n_boot: int = 100,
        log: Callable[[str], None] = print) -> dict:
  """Runs (this shard of) a sweep, then fits and draws when it is complete.

  Args:
    sweep: the sweep.
    workdir: results, runs, figures and report live here.
    shard_index, num_shards: which share of the points to run
      (`isoflop.shard`).
    only: run just this point id.
    collect: train nothing: write the plan and the recorded points' CSV
      (and, when every point is recorded, fit and draw), e.g. after copying
      another workdir's records into this one's results/.
    fit: fit the laws and draw the figures once every point is done.
    n_boot: bootstrap replicates of the fits.
    log: progress sink.

  Returns:
    {"planned", "ran", "skipped", "complete", and "report" when fitted}.
  """
  points, dropped = plan(sweep)
  if not points:
    raise ValueError(
        "the sweep plans no point: " + "; ".join(f"{i}: {w}" for i, w in
                                                 dropped))
  for pid, why in dropped:
    log(f"dropped {pid}: {why}")
  mine = isoflop.shard(points, shard_index, num_shards)
  if collect:
    if only is not None:
      raise ValueError("collect trains nothing; do not name a point to run.")
    mine = []
  elif only is not None:
    mine = [p for p in points if p.id == only]
    if not mine:
      raise ValueError(f"no planned point has id {only!r}; ids: "
                       f"{[p.id for p in points]}")
  os.makedirs(workdir, exist_ok=True)
  primary = jax.process_index() == 0
  if primary:
    atomic_write(os.path.join(workdir, "plan.json"), json.dumps({
        "points": [p.id for p in points], "dropped": dropped,
        "sweep": dataclasses.asdict(sweep)}, indent=1))
  if not collect:
    train.enable_compilation_cache(workdir)
  store = ResultsStore(workdir)
  recorded = _agreed(_recorded(store, points), points)
  todo = [p for p in mine if p.id not in recorded]
  if collect:
    log(f"collecting: {len(recorded)} of {len(points)} points have records; "
        "training none")
  else:
    log(f"shard {shard_index}/{num_shards}: {len(mine)} points, "
        f"{len(mine) - len(todo)} already done, {len(todo)} to run")
  start, ran = time.time(), 0
  stopped = {"planned": len(points), "preempted": True, "complete": False}
  # SIGTERM from here on finishes (or checkpoints) the point in hand and
  # starts no other: a notice during a point's compilation, evaluation or
  # record costs at most one step of it.
  with train.Preemption() as preemption:
    for group in isoflop.groups(todo, sweep.group_size):
      ids = "+".join(p.id for p in group)
      if preemption.agreed():
        log(f"SIGTERM: stopping before {ids}; rerun the same command to "
            "resume")
        return dict(stopped, ran=ran)
      for p in group:
        log(f"[{ran + 1}/{len(todo)}] {p.id}: N={p.params:,} "
            f"D={p.tokens:,} steps={p.train.steps}" +
            (f" (group {ids})" if len(group) > 1 else ""))
      records = train.run_group(
          [p.train for p in group], os.path.join(workdir, "runs", ids),
          log=lambda s, tag=ids: log(f"  {tag} {s}"), preemption=preemption)
      if isinstance(records, dict):  # preempted (SIGTERM): checkpointed, stop
        log(f"preempted during {ids}; rerun the same command to resume")
        return dict(stopped, ran=ran)
      faults.reach("record")
      for p, record in zip(group, records):
        record.update(point_id=p.id, budget=p.budget, depth=p.depth,
                      planned_compute=p.compute)
        if primary:
          store.write(record)
        ran += 1
        phases = ", ".join(f"{k} {v:.1f}"
                           for k, v in record["timing"].items())
        log(f"done {p.id}: exit losses {np.round(record['exit_losses'], 4)} "
            f"({record['wall_seconds']:.1f} s: {phases})")
      eta = (time.time() - start) / ran * (len(todo) - ran)
      log(f"{ran}/{len(todo)} of this shard done, ETA {eta:.0f}s")
  done = sorted(_agreed(_recorded(store, points), points))
  out = {"planned": len(points), "ran": ran,
         "skipped": len(mine) - len(todo), "complete": len(done) == len(points)}
  if primary:
    store.write_csv(point_ids=done)
  if not out["complete"]:
    log(f"{len(done)}/{len(points)} points done; fit and figures wait for "
        "the rest")
  elif fit and primary:
    out["report"] = fit_and_draw(sweep, workdir, n_boot=n_boot, log=log)
  if jax.process_count() > 1:  # the others wait for the fit: no host exits
    # early into jax.distributed's shutdown barrier (300 s by default)
    multihost_utils.sync_global_devices("familial_jax sweep ended")
  return out


def _agreed(ids: set[str], points) -> set[str]:
  """`ids` as process 0 sees them, on every process: the hosts of a
  multi-host run must train the same points in the same order, and a shared
  filesystem may show some of them a record late."""
  if jax.process_count() == 1:
    return ids
  mask = multihost_utils.broadcast_one_to_all(
      np.array([p.id in ids for p in points]))
  return {p.id for p, m in zip(points, np.asarray(mask)) if m}


def _recorded(store: ResultsStore, points) -> set[str]:
  """Ids of the planned points that have a record, each checked to be of
  that point: a record left by another plan under the same id (ids name
  budget, G and depth, so a changed ladder, batch or sequence length keeps
  them) must not stand in for the planned model.

  Raises:
    ValueError: a record's N, D or G differs from its planned point's.
  """
  done = set()
  for p in points:
    r = store.read(p.id)
    if r is None:
      continue
    got, want = (r["N"], r["D"], r["G"]), (p.params, p.tokens, p.granularity)
    if got != want:
      raise ValueError(
          f"{store.path(p.id)} is from another plan: it holds (N, D, G) = "
          f"{got}, the plan has {want} for {p.id}. Run this sweep in another "
          "workdir, or move that sweep's results/ away.")
    done.add(p.id)
  return done


def fit_and_draw(sweep: isoflop.SweepConfig, workdir: str, *,
                 n_boot: int = 100, log: Callable[[str], None] = print
                 ) -> dict:
  """Fits every form to the sweep's results; writes fits.json, the figures
  and report.md."""
  store = ResultsStore(workdir)
  table = store.table()
  log("fitting the laws ...")
  # Resampling whole IsoFLOP curves needs enough of them: with few budgets
  # most replicates would lose a budget and leave the law unidentified.
  report = report_lib.fit_all(table, n_boot=n_boot, resample="budget" if len(
      sweep.budgets) >= 5 else "point", log=log)
  report_lib.analyse_sweep(report, table, sweep)
  atomic_write(os.path.join(workdir, "fits.json"),
               json.dumps(report, indent=1, default=float))
  log(report_lib.format_report(report))
  figures = plots.write_report(table, report, workdir)
  log(f"wrote {len(figures)} figures and report.md under {workdir}")
  return report
