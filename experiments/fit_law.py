r"""Fits L(N, D, G) scaling laws to a loss table and reports them.

Input: a CSV with columns params, tokens, loss and optionally granularity,
budget, exit, exit_params (see familial_jax/laws/table.py), or a sweep's
results directory (its aggregate results.csv).

  python experiments/fit_law.py --input=losses.csv --form=all \
      --bootstrap=200 --output=fit.json

Prints one table per form (parameters with bootstrap confidence intervals,
objective, leave-one-budget-out error) and writes them to --output as JSON,
parameters by name (E, A, B, alpha, beta, gamma). For a sweep's results
directory whose plan.json records the sweep (its shape ladder), it also prints
the compute-optimal allocation and the check of the paper's claims, as the
sweep's report.md has them; with --repeats (the same points trained with
other seeds) also how far the losses, the observed Efficiency Leverage and the
cost of granularity move between seeds:

  python experiments/fit_law.py --input=runs/sweep \
      --repeats=runs/sweep_seed1,runs/sweep_seed2

and with --alternatives (the same points trained with other settings, say
learning rates) which setting each size prefers, and where each IsoFLOP
profile's minimum lies with the sweep's setting and with each size's best:

  python experiments/fit_law.py --input=runs/sweep --input_label=lr3e-3 \
      --alternatives=lr1e-3=runs/sweep_lr1e-3,lr1e-2=runs/sweep_lr1e-2

(LABEL=PATH+PATH joins one setting's points trained in several sittings;
--reference=LABEL compares against one of the alternatives instead, say the
sweep's setting rerun with the others' data order; --setting_figure draws it;
--best_of=DIR writes every model at its best setting as a results directory,
results.csv and plan.json, that this binary then fits like a sweep.)
--input=DIR+DIR joins the points of one sweep trained in several sittings
(say the same seed at some budgets, then at others).
--budgets=4e10,1.2e11,... fits only those budgets' points, say to compare with
a sweep that ran fewer of them. --cost_figure=PATH draws the cost of granularity
(family / dense loss at equal budget and depth) against compute: the input's,
each model's best setting's and each repeat's. --report_dir=DIR writes the
report.md and figures/ that a sweep writes, from the fits (for a committed
results directory, its report and figures again from its CSV and plan.json):

  python experiments/fit_law.py --input=experiments/results/tiny_cpu \
      --report_dir=/tmp/tiny_cpu
"""

import dataclasses
import hashlib
import json
import os
import sys
import time

# The fits run on the host CPU (familial_jax.laws.forms.on_host_float64):
# started on a GPU node, this binary would otherwise also start the GPU's
# backend and reserve most of its memory for nothing.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
import numpy as np

from familial_jax import isoflop
from familial_jax import plots
from familial_jax.laws import report as report_lib
from familial_jax.laws import table as table_lib
from familial_jax.laws.fitting import BACKENDS
from familial_jax.results import atomic_write

_INPUT = flags.DEFINE_string(
    "input", None, "CSV file, or a sweep results directory holding "
    "results.csv; PATH+PATH joins the points of one sweep trained in several "
    "sittings (directories: the first's plan.json, with every part's budgets "
    "and granularities).")
_FORM = flags.DEFINE_enum(
    "form", "all", ["chinchilla", "multiplicative", "reducible", "branch", "all"],
    "Law to fit; 'all' fits the three unified forms (and the branch law when "
    "the table has per-exit rows) and selects between them.")
_DELTA = flags.DEFINE_float("huber_delta", 1e-3, "Huber delta on log residuals.")
_BOOT = flags.DEFINE_integer("bootstrap", 100,
                             "Bootstrap replicates for intervals (0: none).")
_RESAMPLE = flags.DEFINE_enum("resample", "point", ["point", "budget"],
                              "What the bootstrap resamples.")
_LEVEL = flags.DEFINE_float("level", 0.95, "Coverage of the intervals.")
_SEED = flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
# Checked when the flags are parsed, not after minutes of fitting.
flags.register_validator("bootstrap", lambda v: v == 0 or v >= 2,
                         "--bootstrap must be 0 (no intervals) or at least 2 "
                         "replicates.")
flags.register_validator("level", lambda v: 0 < v < 1,
                         "--level must be in (0, 1).")
flags.register_validator("huber_delta", lambda v: 0 < v < float("inf"),
                         "--huber_delta must be finite and > 0.")
_BACKEND = flags.DEFINE_enum("backend", "jaxopt", list(BACKENDS),
                             "L-BFGS backend.")
_OUTPUT = flags.DEFINE_string("output", None, "Write the fits here as JSON.")
_REPEATS = flags.DEFINE_list(
    "repeats", [],
    "The same sweep's points trained with other seeds (CSVs or results "
    "directories; all points or some; PATH+PATH joins the points of one seed "
    "trained in several sittings; LABEL=PATH names one in --cost_figure): "
    "prints how far the family losses, the "
    "observed Efficiency Leverage and the cost of granularity move between "
    "seeds, next to the leverage's trend over budgets. Needs --input to be a "
    "results directory.")
_ALTERNATIVES = flags.DEFINE_list(
    "alternatives", [],
    "The same sweep's points trained with other settings (say other learning "
    "rates), as LABEL=PATH (CSV or results directory; a bare PATH is labelled "
    "by its name; LABEL=PATH+PATH joins the points of one setting trained in "
    "several sittings): prints per size the setting with the lowest family "
    "loss, each IsoFLOP profile's minimum with --input's setting and with "
    "each size's best, and the cost of granularity both ways.")
_SETTING_FIGURE = flags.DEFINE_string(
    "setting_figure", None,
    "With --alternatives: draw the profiles of every setting here (PNG).")
_REFERENCE = flags.DEFINE_string(
    "reference", None,
    "With --alternatives: compare against this one of them (say the input's "
    "setting rerun with the same data order as the others) instead of "
    "--input, which then only gives the law's N*.")
_BUDGETS = flags.DEFINE_list(
    "budgets", [],
    "Fit only --input's points of these budgets (say 4e10,1.2e11), to compare "
    "with a sweep of fewer budgets or to fit low budgets and look at the "
    "high ones. Budgets are the budget column's (else 6ND, on a 0.05-decade "
    "grid).")
_COST_FIGURE = flags.DEFINE_string(
    "cost_figure", None,
    "Draw the cost of granularity (mean family / dense loss at equal budget "
    "and depth) against compute here (PNG): --input's, with --alternatives "
    "also each model's best setting's, with --repeats each repeat's (over "
    "the models it shares with --input).")
_REPORT_DIR = flags.DEFINE_string(
    "report_dir", None,
    "Write report.md and its figures (figures/*.png) into this directory, as "
    "a sweep does in its workdir: the fitted laws against the data, and as "
    "far as the input "
    "allows, the IsoFLOP curves (budgets: the budget column, else 6ND), the "
    "cost of granularity (G > 1), the branch law (per-exit rows), and for a "
    "results directory with its plan.json the compute-optimal allocation and "
    "the Efficiency Leverage.")
_INPUT_LABEL = flags.DEFINE_string(
    "input_label", "input",
    "The label of --input's setting (--alternatives, --cost_figure).")
_BEST_OF = flags.DEFINE_string(
    "best_of", None,
    "With --alternatives: write each of the reference's models at the setting "
    "that gave it the lowest family loss (the per-size choice printed) to "
    "this directory as results.csv, with a setting column, and --input's "
    "plan.json, so that --input=DIR fits the law of the best settings.")


def _csv_of(path: str) -> str:
  """A results directory's results.csv; any other path as it is."""
  return os.path.join(path, "results.csv") if os.path.isdir(path) else path


def _resolve(path: str) -> str:
  path = _csv_of(path)
  if not os.path.isfile(path):
    raise ValueError(f"no such input file: {path}")
  return path


def _sweep_of(path: str):
  """The sweep config recorded in a results directory's plan.json, if any."""
  plan = os.path.join(path, "plan.json")
  if not os.path.isfile(plan):
    return None
  with open(plan) as f:
    recorded = json.load(f).get("sweep")
  return isoflop.sweep_from_dict(recorded) if recorded else None


def _joined_sweep(parts: list[str]):
  """The sweep of results directories trained in several sittings: the
  first's, with every part's budgets and granularities. None unless every part
  records a sweep; their shape ladders must agree."""
  sweeps = [_sweep_of(p) for p in parts]
  if any(s is None for s in sweeps):
    return None
  for part, s in zip(parts[1:], sweeps[1:]):
    if s.ladder != sweeps[0].ladder:
      raise ValueError(f"--input: {part}'s plan.json has another shape ladder "
                       f"than {parts[0]}'s; joined points need the same.")
  union = lambda name: tuple(sorted({v for s in sweeps
                                     for v in getattr(s, name)}))
  return dataclasses.replace(sweeps[0], budgets=union("budgets"),
                             granularities=union("granularities"))


def _only_budgets(table, sweep, wanted: list[str]):
  """The table's rows of the wanted budgets, the sweep cut to them, and those
  budgets as the table has them."""
  try:
    wanted = [float(b) for b in wanted]
  except ValueError:
    raise ValueError(f"--budgets: {wanted} are not all numbers.") from None
  budgets = table_lib.budgets_of(table)
  have = np.unique(budgets)
  chosen = set()
  for b in wanted:
    near = have[np.isclose(have, b, rtol=1e-3)]
    if not near.size:
      raise ValueError(f"--budgets: no point has budget {b:g}; the input's "
                       f"budgets are {', '.join(f'{h:g}' for h in have)}.")
    chosen.add(float(near[0]))
  chosen = sorted(chosen)
  if sweep is not None:
    sweep = dataclasses.replace(sweep, budgets=tuple(
        c for c in sweep.budgets if np.isclose(c, chosen, rtol=1e-3).any()))
  return table_lib.select(table, np.isin(budgets, chosen)), sweep, chosen


def _write_best_of(tables: dict, reference: str, argv_input: str,
                   out_dir: str) -> dict:
  """`report.best_of` as a results directory: results.csv (a setting column,
  then the tables' columns) and --input's plan.json, if it has one."""
  table, settings = report_lib.best_of(tables, reference)
  path = os.path.join(out_dir, "results.csv")
  columns = list(table)
  lines = [",".join(["setting"] + columns)]
  lines += [",".join([s] + [f"{table[c][i]:.17g}" for c in columns])
            for i, s in enumerate(settings)]
  os.makedirs(out_dir, exist_ok=True)
  atomic_write(path, "\n".join(lines) + "\n")
  plan = os.path.join(argv_input, "plan.json")
  if os.path.isfile(plan):
    with open(plan) as f:
      atomic_write(os.path.join(out_dir, "plan.json"), f.read())
  labels = np.array(settings)
  return {"path": os.path.abspath(path), "rows": len(settings),
          "models_by_setting": {s: len(table_lib.family_table(
              table_lib.select(table, labels == s))["loss"]) for s in tables}}


def _alternative(spec: str) -> tuple[str, list[str]]:
  """One --alternatives entry, LABEL=PATH[+PATH...] or a bare PATH, as its
  label ("" for a bare PATH) and its paths."""
  label, _, alt = spec.rpartition("=")
  return label, alt.split("+")


def _joined(flag: str, spec: str, parts: list[str], label: str = ""):
  """The tables at parts (CSVs or results directories; spec: the flag's entry
  that names them) as one table; errors name the entry, or label."""
  if not all(parts):
    raise ValueError(f"--{flag}={spec} has an empty part; join paths as "
                     "PATH+PATH.")
  try:
    return table_lib.concat([table_lib.load_csv(_resolve(p)) for p in parts])
  except ValueError as e:
    raise ValueError(f"--{flag}: {label or spec}: {e}") from None


def _alternatives(table, reference: str) -> dict:
  """{label: table} of --alternatives, --input's first unless --reference."""
  tables = {} if _REFERENCE.value else {_INPUT_LABEL.value: table}
  for spec in _ALTERNATIVES.value:
    label, parts = _alternative(spec)
    if not label and len(parts) > 1:
      raise ValueError(f"--alternatives: {spec} joins several paths; give "
                       "it a label, LABEL=PATH+PATH.")
    label = label or os.path.basename(os.path.normpath(parts[0]))
    if label in tables:
      raise ValueError(f"--alternatives: the label {label!r} is used twice.")
    tables[label] = _joined("alternatives", spec, parts, label)
  if reference not in tables:
    raise ValueError(f"--reference={reference} is not a label of "
                     f"--alternatives ({sorted(tables)}).")
  return tables


def _repeats() -> list[tuple[str, list[str], dict]]:
  """--repeats as (label, absolute paths, joined table) each; a bare entry is
  labelled by its paths' names."""
  out = []
  for spec in _REPEATS.value:
    label, parts = _alternative(spec)
    label = label or "+".join(os.path.basename(os.path.normpath(p))
                              for p in parts)
    table = _joined("repeats", spec, parts)
    out.append((label, [os.path.abspath(_resolve(p)) for p in parts], table))
  return out


def _cost_curves(report: dict) -> dict:
  """--cost_figure's curves: {label: {G: {budget: ratio}}}."""
  curves = {_INPUT_LABEL.value: report["granularity_cost"]}
  if "setting_check" in report:
    curves["each model's best setting"] = {
        g: {c: v["best"] for c, v in by_c.items()}
        for g, by_c in report["setting_check"]["granularity_cost"].items()}
  spread = report.get("seed_spread", {})
  for i, label in enumerate(spread.get("labels", [])):
    curves[label] = {g: {c: v[i + 1] for c, v in by_c.items()}
                     for g, by_c in spread["granularity_cost"].items()}
  return curves


def run(argv_input: str, form: str) -> tuple[dict, dict]:
  """The report of the fits, and the loss table they were fitted to."""
  parts = argv_input.split("+")
  table = (table_lib.load_csv(_resolve(argv_input)) if len(parts) == 1 else
           _joined("input", argv_input, parts))
  inputs = [_resolve(p) for p in parts]
  sweep = _joined_sweep(parts)
  budgets = None
  if _BUDGETS.value:
    table, sweep, budgets = _only_budgets(table, sweep, _BUDGETS.value)
  if _REPEATS.value and (sweep is None or form != "all"):
    raise ValueError("--repeats needs --form=all and an --input results "
                     "directory whose plan.json records the sweep.")
  # Read before the fit, so that a bad path or table fails in a second.
  repeats = _repeats()
  cost = report_lib.granularity_cost(table)
  if _COST_FIGURE.value and not cost:
    raise ValueError("--cost_figure: no family (G > 1) has a dense model of "
                     "the same budget and depth to compare with.")
  if _ALTERNATIVES.value:
    reference = _REFERENCE.value or _INPUT_LABEL.value
    tables = _alternatives(table, reference)
  forms = report_lib.default_forms(table) if form == "all" else [form]
  start = time.time()
  # Progress on stderr; the tables go to stdout.
  report = report_lib.fit_all(
      table, forms, _DELTA.value, _BOOT.value, _RESAMPLE.value, _LEVEL.value,
      _SEED.value, _BACKEND.value,
      log=lambda line: print(line, file=sys.stderr, flush=True))
  if sweep is not None and form == "all":
    report_lib.analyse_sweep(report, table, sweep)
  report["granularity_cost"] = cost
  if repeats:
    labels, paths, repeat_tables = zip(*repeats)
    report["seed_spread"] = dict(
        report_lib.seed_spread(report, table, list(repeat_tables),
                               sweep.ladder),
        repeats=["+".join(p) for p in paths], labels=list(labels))
  if _ALTERNATIVES.value:
    report["setting_check"] = report_lib.setting_check(
        tables, reference, report, sweep.ladder if sweep else None)
    if _BEST_OF.value:
      report["best_of"] = _write_best_of(tables, reference, argv_input,
                                         _BEST_OF.value)
  digests = []
  for path in inputs:
    with open(path, "rb") as f:
      digests.append(hashlib.sha256(f.read()).hexdigest())
  if budgets:
    report["budgets"] = budgets
  report.update(input="+".join(os.path.abspath(p) for p in inputs),
                input_sha256="+".join(digests),
                n_rows=len(table["loss"]), huber_delta=_DELTA.value,
                seconds=round(time.time() - start, 2))
  return report, table


# Flags that only act with one of some others: refused alone, not ignored.
_NEEDS = {"setting_figure": ("alternatives",), "reference": ("alternatives",),
          "input_label": ("alternatives", "cost_figure"),
          "best_of": ("alternatives",)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _INPUT.value:
    raise app.UsageError("--input is required (a CSV or a results directory).")
  # Checked before the fit, so that a mistyped command fails in a second.
  for name, needs in _NEEDS.items():
    if flags.FLAGS[name].present and not any(flags.FLAGS[n].value
                                             for n in needs):
      raise app.UsageError(f"--{name} only applies with "
                           + " or ".join(f"--{n}" for n in needs) + ".")
  if _REFERENCE.value and flags.FLAGS["input_label"].present:
    raise app.UsageError("--input_label has no use with --reference: the "
                         "input then only gives the law's N*.")
  elif _BEST_OF.value and "+" in _INPUT.value:
    raise app.UsageError("--best_of takes one --input directory (its plan.json "
                         "is copied), not a joined one.")
  elif _BEST_OF.value:
    out = os.path.join(_BEST_OF.value, "results.csv")
    for given in [_INPUT.value] + [p for a in _ALTERNATIVES.value
                                   for p in _alternative(a)[1]]:
      path = _csv_of(given)
      if os.path.isfile(out) and os.path.isfile(path) and os.path.samefile(
          out, path):
        raise app.UsageError(f"--best_of={_BEST_OF.value} would overwrite the "
                             f"input {path}; give another directory.")
  try:
    report, table = run(_INPUT.value, _FORM.value)
  except ValueError as e:
    sys.exit(f"fit_law: error: {e}")
  print(report_lib.format_report(report))
  if report.get("claims"):
    print(report_lib.format_analysis(report))
  if "seed_spread" in report:
    print(report_lib.format_seed_spread(report["seed_spread"]))
  if "setting_check" in report:
    print(report_lib.format_setting_check(report["setting_check"]))
    if _SETTING_FIGURE.value:
      path = plots.setting_check(report["setting_check"],
                                 _SETTING_FIGURE.value)
      print(f"wrote {path}")
  if _COST_FIGURE.value:
    path = plots.granularity_cost(_cost_curves(report), _COST_FIGURE.value)
    print(f"wrote {path}")
  if _REPORT_DIR.value:
    figures = plots.write_report(table, report, _REPORT_DIR.value)
    print(f"wrote report.md and {len(figures)} figures ({', '.join(figures)})"
          f" under {_REPORT_DIR.value}")
  if "best_of" in report:
    b = report["best_of"]
    print(f"wrote {b['path']}: {b['rows']} rows; models at each setting: "
          + ", ".join(f"{s} {n}" for s, n in b["models_by_setting"].items()))
  if _OUTPUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
    tmp = _OUTPUT.value + ".tmp"
    with open(tmp, "w") as f:
      json.dump(report, f, indent=2)
    os.replace(tmp, _OUTPUT.value)
    print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
