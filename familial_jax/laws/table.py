"""Loss tables: loading, validation and aggregation (numpy only).

A table is a mapping from column name to a 1-D array (a dict, or anything
indexable by column name such as a pandas DataFrame). Columns:

  params       N, non-embedding parameters of the whole model   (required)
  tokens       D, training tokens                               (required)
  loss         validation loss in nats/token                    (required)
  granularity  G, number of exits (default 1)
  budget       C, the IsoFLOP budget the point belongs to
  exit         1-based exit index g of a per-exit row
  exit_params  N_g, non-embedding parameters of sub-model g

Rows with an `exit` column are per-exit losses; the unified law is fitted to
the family loss, the mean over a model's exits (`family_table`).
"""

from __future__ import annotations

import csv
from typing import Any

import numpy as np

COLUMNS = ("params", "tokens", "loss", "granularity", "budget", "exit",
           "exit_params")
REQUIRED = ("params", "tokens", "loss")
Table = dict[str, np.ndarray]


def as_table(data: Any) -> Table:
  """Converts a mapping of columns into a dict of float64 numpy arrays.

  Unknown columns are kept; `granularity` defaults to 1.

  Raises:
    ValueError: missing required columns, ragged or non-numeric columns.
  """
  try:
    names = list(data.keys())
  except AttributeError:
    raise ValueError(
        "a loss table must be a mapping from column name to values (a dict "
        f"or a DataFrame), got {type(data).__name__}.") from None
  missing = [c for c in REQUIRED if c not in names]
  if missing:
    raise ValueError(
        f"loss table is missing required column(s) {missing}; it has "
        f"{names}. Required: {list(REQUIRED)}.")
  table = {}
  for name in names:
    try:
      column = np.asarray(data[name], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
      raise ValueError(
          f"column {name!r} of the loss table is not numeric.") from None
    table[name] = column
  lengths = {k: len(v) for k, v in table.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"loss table columns have different lengths: {lengths}.")
  n = lengths["loss"]
  table.setdefault("granularity", np.ones(n))
  return table


def check_positive_finite(table: Table, columns) -> None:
  """Raises ValueError naming the first bad column and row."""
  for name in columns:
    if name not in table:
      raise ValueError(f"loss table is missing column {name!r}.")
    col = table[name]
    bad = np.flatnonzero(~np.isfinite(col) | (col <= 0))
    if bad.size:
      raise ValueError(
          f"column {name!r} must be finite and > 0; row {int(bad[0])} holds "
          f"{col[bad[0]]!r} ({bad.size} bad row(s) in all).")


def select(table: Table, mask) -> Table:
  """Rows where mask is true."""
  return {k: v[mask] for k, v in table.items()}


def family_table(table: Table) -> Table:
  """Collapses per-exit rows to one row per model with the mean exit loss.

  Rows without an `exit` column are returned unchanged. Models are told apart
  by (params, tokens, granularity, budget).
  """
  return model_table(table) if "exit" in table else table


def model_table(table: Table) -> Table:
  """One row per model, (params, tokens, granularity, budget), at the mean
  loss of all its rows: its exits, and its repeats (seeds) if the table
  holds a model more than once. Other columns are dropped."""
  keys = [k for k in ("params", "tokens", "granularity", "budget") if k in table]
  stacked = np.stack([table[k] for k in keys], 1)
  uniq, inverse = np.unique(stacked, axis=0, return_inverse=True)
  inverse = inverse.reshape(-1)
  loss = np.bincount(inverse, table["loss"]) / np.bincount(inverse)
  out = {k: uniq[:, i] for i, k in enumerate(keys)}
  out["loss"] = loss
  return out


def concat(tables) -> Table:
  """The rows of several tables with the same columns, one after another.

  For one set of points trained in several sittings (say a sweep's low
  budgets and, later, its top budget).

  Raises:
    ValueError: no tables, different columns, or a row (a model's exit: its
      params, tokens, granularity, budget and exit) given more than once.
  """
  tables = [as_table(t) for t in tables]
  if not tables:
    raise ValueError("concat needs at least one table.")
  columns = list(tables[0])
  for i, t in enumerate(tables[1:], 1):
    if set(t) != set(columns):
      raise ValueError(f"table {i} has the columns {sorted(t)}, table 0 "
                       f"{sorted(columns)}; joined tables need the same.")
  out = {c: np.concatenate([t[c] for t in tables]) for c in columns}
  keys = [k for k in ("params", "tokens", "granularity", "budget", "exit")
          if k in out]
  stacked = np.stack([out[k] for k in keys], 1)
  uniq, counts = np.unique(stacked, axis=0, return_counts=True)
  if (counts > 1).any():
    row = dict(zip(keys, uniq[np.argmax(counts > 1)].tolist()))
    raise ValueError(f"{int((counts > 1).sum())} row(s) appear more than "
                     f"once, the first {row}; each point must come from one "
                     "table, once.")
  return out


def budgets_of(table: Table) -> np.ndarray:
  """The budget of every row: the `budget` column, or 6ND on a 0.05-decade grid."""
  if "budget" in table:
    return table["budget"]
  log_c = np.log10(6 * table["params"] * table["tokens"])
  return 10 ** (np.round(log_c * 20) / 20)


def load_csv(path: str) -> Table:
  """Reads a loss table from a CSV file with a header row."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows:
    raise ValueError(f"{path}: no data rows (is the header the only line?).")
  columns: dict[str, list] = {k: [] for k in rows[0] if k is not None}
  missing = [c for c in REQUIRED if c not in columns]
  if missing:  # named against the file's header, not the columns kept
    raise ValueError(
        f"{path}: no column(s) {missing}; its columns are {list(columns)}. "
        f"Required: {list(REQUIRED)}; optional: "
        f"{[c for c in COLUMNS if c not in REQUIRED]}; others are ignored.")
  for i, row in enumerate(rows):
    if None in row or any(row.get(k) is None for k in columns):
      raise ValueError(f"{path}: row {i + 2} has a different number of fields "
                       "than the header.")
    for k in columns:
      value = row[k].strip()
      if k in COLUMNS:
        try:
          value = float(value)
        except ValueError:
          raise ValueError(
              f"{path}: row {i + 2}, column {k!r}: {row[k]!r} is not a "
              "number.") from None
      columns[k].append(value)
  return as_table({k: v for k, v in columns.items() if k in COLUMNS})


def load_epoch_chinchilla(path: str, drop_highest: int = 5) -> Table:
  """Epoch AI's extraction of the Chinchilla data, as Besiroglu et al. (2024)
  fit it: columns "Model Size" (N), "Training FLOP" (C) and "loss"; the
  `drop_highest` highest-loss points dropped; D = C / (6N)."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  n = np.array([float(r["Model Size"]) for r in rows])
  c = np.array([float(r["Training FLOP"]) for r in rows])
  loss = np.array([float(r["loss"]) for r in rows])
  keep = np.argsort(loss)[:len(loss) - drop_highest]
  return {"params": n[keep], "tokens": c[keep] / (6 * n[keep]),
          "loss": loss[keep], "granularity": np.ones(len(keep))}
