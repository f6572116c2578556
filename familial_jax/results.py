"""Results store: one JSON record per sweep point, written atomically.

Layout under a sweep's workdir:
  results/<point id>.json   one finished point (written last, atomically)
  results.csv               aggregate, one row per (point, exit), in the
                            schema of experiments/fit_law.py

A record is used only if it parses and carries every required field with
`"complete": true`; anything else (a truncated or foreign file) counts as
missing, so the point is rerun rather than fitted.
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings

import numpy as np

from familial_jax import faults

REQUIRED = ("point_id", "exit_losses", "N", "N_g", "D", "C", "G", "budget",
            "seed", "versions", "corpus")
CSV_COLUMNS = ("point_id", "params", "tokens", "loss", "granularity", "budget",
               "exit", "exit_params", "compute", "depth", "d_model")


def atomic_write(path: str, text: str) -> None:
  """Writes via a temporary file, fsync and rename: never a partial file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text[:len(text) // 2])
    f.flush()
    faults.reach("result")
    f.write(text[len(text) // 2:])
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class ResultsStore:
  """The finished points of one sweep."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.dir = os.path.join(workdir, "results")

  def path(self, point_id: str) -> str:
    return os.path.join(self.dir, f"{point_id}.json")

  def write(self, record: dict) -> None:
    missing = [k for k in REQUIRED if k not in record]
    if missing:
      raise ValueError(f"result record lacks {missing}.")
    atomic_write(self.path(record["point_id"]),
                 json.dumps(dict(record, complete=True), indent=1))

  def read(self, point_id: str) -> dict | None:
    """The point's record, or None when missing or not a valid record."""
    path = self.path(point_id)
    if not os.path.exists(path):
      return None
    try:
      with open(path) as f:
        record = json.load(f)
    except (OSError, ValueError) as e:
      warnings.warn(f"ignoring unreadable result {path}: {e}")
      return None
    if not isinstance(record, dict) or not record.get("complete") or any(
        k not in record for k in REQUIRED) or record["point_id"] != point_id:
      warnings.warn(f"ignoring incomplete result record {path}")
      return None
    return record

  def records(self, point_ids=None) -> list[dict]:
    """Valid records, for the given ids or for every file present."""
    if point_ids is None:
      if not os.path.isdir(self.dir):
        return []
      point_ids = sorted(f[:-5] for f in os.listdir(self.dir)
                         if f.endswith(".json"))
    return [r for r in (self.read(i) for i in point_ids) if r is not None]

  def rows(self, point_ids=None) -> list[dict]:
    """One row per (point, exit) in CSV_COLUMNS order."""
    rows = []
    for r in self.records(point_ids):
      for g, (loss, n_g) in enumerate(zip(r["exit_losses"], r["N_g"]), 1):
        rows.append({"point_id": r["point_id"], "params": r["N"],
                     "tokens": r["D"], "loss": loss, "granularity": r["G"],
                     "budget": r["budget"], "exit": g, "exit_params": n_g,
                     "compute": r["C"], "depth": r.get("depth", ""),
                     "d_model": r["config"]["model"]["d_model"]})
    return rows

  def table(self, point_ids=None) -> dict[str, np.ndarray]:
    """Per-exit loss table (see familial_jax.laws.table) of the records."""
    rows = self.rows(point_ids)
    numeric = [c for c in CSV_COLUMNS if c not in ("point_id", "depth")]
    return {c: np.array([row[c] for row in rows], np.float64)
            for c in numeric}

  def write_csv(self, path: str | None = None, point_ids=None) -> str:
    """Writes the aggregate CSV atomically; returns its path."""
    path = path or os.path.join(self.workdir, "results.csv")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(self.rows(point_ids))
    atomic_write(path, buf.getvalue())
    return path
