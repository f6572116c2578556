"""Measure trained runs again on another validation set, without retraining.

A sweep validates every model on a fixed set of held-out windows
(`DataConfig.eval_sample`, `TrainConfig.eval_windows`). To ask how far a
fitted law depends on that choice, `evaluate_run` loads a run's final
checkpoint and measures every exit on any set of the held-out stream's
windows (all of them by default), and `reevaluate_sweep` does it for every
recorded point of a sweep whose checkpoints are still on disk, writing a
results directory that `experiments/fit_law.py` fits like the sweep's own.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from typing import Callable

import jax
import numpy as np

from familial_jax import data as data_lib
from familial_jax import relay
from familial_jax import train
from familial_jax.config import TrainConfig
from familial_jax.model import FamilialLM
from familial_jax.results import ResultsStore


@functools.lru_cache(maxsize=8)
def _loss_fn(model: FamilialLM):
  return jax.jit(lambda params, batch: train.exit_losses(params, model, batch))


def evaluate_run(run_dir: str, *, eval_windows: int = 0,
                 eval_sample: str = "spread", batch_size: int = 256,
                 require_final: bool = True, member: int | None = None
                 ) -> dict:
  """Every exit's mean loss over held-out windows of a finished run.

  Args:
    run_dir: a training run (train.py's workdir, a sweep's runs/<point id>).
    eval_windows: how many windows of the run's held-out stream (its own
      corpus, split and seq_len); 0: all of them.
    eval_sample: "spread" (window i * n // k of n) or "first".
    batch_size: windows per evaluation batch (the last one may be smaller).
    require_final: refuse a checkpoint from before the run's last step.
    member: which run of a group (a sweep's vmapped runs of one shape,
      runs/<id>+<id>...), in the order of its name.

  Returns:
    {"exit_losses", "windows", "eval_sample", "step"}: the mean over the
    windows (each has seq_len targets) of every exit's loss. Every chosen
    window counts (training's evaluation drops a last partial batch, so it
    matches only where eval_windows is a multiple of the run's batch).
  """
  if eval_windows < 0 or batch_size < 1:
    raise ValueError(f"eval_windows must be >= 0 (0: all) and batch_size "
                     f">= 1, got {eval_windows} and {batch_size}.")
  cfg, params, step, last_step = relay.load_checkpoint(run_dir, member)
  if require_final and step != last_step:
    raise ValueError(f"{run_dir}: the latest checkpoint is step {step} of "
                     f"{last_step}; the run has not finished.")
  data = train.load_data(cfg.data)
  windows = data_lib.validation_windows(data.validation, cfg.seq_len,
                                        eval_windows, eval_sample)
  model = FamilialLM(cfg.model)
  loss = _loss_fn(model)
  total = np.zeros(cfg.model.granularity)
  for i in range(0, len(windows), batch_size):
    batch = windows[i:i + batch_size]
    total += len(batch) * np.asarray(loss(params, batch), np.float64)
  return {"exit_losses": (total / len(windows)).tolist(),
          "windows": len(windows), "eval_sample": eval_sample, "step": step}


def _run_of(workdir: str, point_id: str) -> tuple[str, int | None] | None:
  """Where a sweep trained a point: runs/<id>, or the group runs/<a>+<b>...
  that holds it (and its place there); None when neither is on disk."""
  runs = os.path.join(workdir, "runs")
  if os.path.isdir(os.path.join(runs, point_id, "checkpoints")):
    return os.path.join(runs, point_id), None
  if os.path.isdir(runs):
    for name in sorted(os.listdir(runs)):
      ids = name.split("+")
      if len(ids) > 1 and point_id in ids and os.path.isdir(
          os.path.join(runs, name, "checkpoints")):
        return os.path.join(runs, name), ids.index(point_id)
  return None


def reevaluate_sweep(workdir: str, output: str, *, eval_windows: int = 0,
                     eval_sample: str = "spread",
                     log: Callable[[str], None] = print) -> str:
  """Measures every recorded point of a sweep again; returns the CSV's path.

  Writes output/results/<point id>.json (the sweep's record with the new
  losses, and under "reevaluated" the windows, the sample and the losses it
  had), output/results.csv and the sweep's plan.json. A point trained in a
  group (SweepConfig.group_size > 1) is read from its group's checkpoint.
  Points already
  measured in output with the same windows are kept (rerunning resumes);
  a recorded point without its final checkpoint is an error that names it.
  """
  store, out = ResultsStore(workdir), ResultsStore(output)
  records = store.records()
  if not records:
    raise ValueError(f"{workdir} has no recorded points (results/*.json).")
  where = {r["point_id"]: _run_of(workdir, r["point_id"]) for r in records}
  missing = [pid for pid, w in where.items() if w is None]
  if missing:
    raise ValueError(
        f"{len(missing)} of {len(records)} recorded points have no checkpoint "
        f"under {workdir}/runs (say {', '.join(missing[:3])}): a sweep keeps "
        "them unless they were deleted.")
  start = time.time()
  for i, record in enumerate(records, 1):
    pid = record["point_id"]
    done = out.read(pid)
    if done and done.get("reevaluated", {}).get("eval_sample") == eval_sample \
        and done["reevaluated"].get("requested_windows") == eval_windows:
      continue
    t = time.time()
    run_dir, member = where[pid]
    got = evaluate_run(run_dir, eval_windows=eval_windows,
                       eval_sample=eval_sample, member=member)
    new = dict(
        record,
        **train.loss_fields(TrainConfig.from_dict(record["config"]),
                            np.array(got["exit_losses"])),
        validation_tokens=got["windows"] * record["config"]["seq_len"],
        reevaluated={
            "windows": got["windows"], "requested_windows": eval_windows,
            "eval_sample": eval_sample, "step": got["step"],
            "seconds": time.time() - t, "versions": train.versions(),
            "from": {k: record.get(k) for k in (
                "exit_losses", "family_loss", "weighted_loss",
                "validation_tokens")}})
    out.write(new)
    log(f"[{i}/{len(records)}] {pid}: {got['windows']} windows, family loss "
        f"{record['family_loss']:.4f} -> {new['family_loss']:.4f} "
        f"({time.time() - t:.1f} s, {time.time() - start:.0f} s so far)")
  plan = os.path.join(workdir, "plan.json")
  if os.path.exists(plan):
    shutil.copyfile(plan, os.path.join(output, "plan.json"))
  return out.write_csv()


__all__ = ["evaluate_run", "reevaluate_sweep"]
