"""Fitting every form at once and reporting it (text, JSON, markdown)."""

from __future__ import annotations

import os

import numpy as np

from familial_jax.laws import analysis
from familial_jax.laws import fitting as fit_lib
from familial_jax.laws import forms as forms_lib
from familial_jax.laws import table as table_lib


def default_forms(table) -> list[str]:
  """The unified forms the data can support, plus the branch law when the
  table has per-exit rows."""
  table = table_lib.as_table(table)
  forms = list(forms_lib.UNIFIED_FORMS)
  if len(np.unique(table["granularity"])) < 2:
    forms = ["chinchilla"]
  if "exit" in table and "exit_params" in table:
    forms.append("branch")
  return forms


def fit_all(table, forms=None, huber_delta: float = 1e-3, n_boot: int = 100,
            resample: str = "point", level: float = 0.95, seed: int = 0,
            backend: str = "jaxopt") -> dict:
  """Fits every form, with bootstrap intervals and held-out selection.

  Returns:
    JSON-ready {"fits": {form: {...}}, "selected_form": name or None}.
  """
  forms = default_forms(table) if forms is None else list(forms)
  out = {}
  for name in forms:
    result = fit_lib.fit(table, name, huber_delta, backend=backend)
    entry = result.to_json()
    if n_boot:
      entry["bootstrap"] = analysis.bootstrap(
          table, result, n_boot, resample=resample, level=level,
          seed=seed).to_json()
    out[name] = entry
  unified = [f for f in forms if f in forms_lib.UNIFIED_FORMS]
  selected = None
  if len(unified) > 1:
    selection = analysis.leave_one_budget_out(table, unified, huber_delta,
                                              backend)
    for name, v in selection["forms"].items():
      out[name]["heldout_rmse_log"] = v["rmse_log"]
    selected = selection["best"]
  return {"fits": out, "selected_form": selected, "huber_delta": huber_delta}


def _result(report: dict, form: str) -> fit_lib.FitResult:
  """A FitResult-like object rebuilt from a report entry (for predictions)."""
  entry = report["fits"][form]
  f = forms_lib.get_form(form)
  return fit_lib.FitResult(
      form=form, params=entry["params"], raw=f.from_natural(entry["params"]),
      objective=entry["objective"], converged=entry["converged"],
      grad_norm=entry["grad_norm"], residuals=np.zeros(0),
      predictions=np.zeros(0), huber_delta=entry["huber_delta"],
      n_points=entry["n_points"], n_starts=entry["n_starts"])


def law_for_analysis(report: dict) -> str | None:
  """The G form used for allocation and EL: the selected one if it has a G,
  else multiplicative."""
  fits = report["fits"]
  if report.get("selected_form") in ("multiplicative", "reducible"):
    return report["selected_form"]
  return "multiplicative" if "multiplicative" in fits else None


def analyse(report: dict, table, ladder, budgets, granularities) -> dict:
  """Compute-optimal allocation and Efficiency Leverage along the ladder,
  over budgets from a third of the smallest to 100x the largest."""
  form = law_for_analysis(report)
  if form is None:
    return {}
  result = _result(report, form)
  grid = np.logspace(np.log10(min(budgets) / 3), np.log10(max(budgets) * 100),
                     12)
  optimal, leverage = {}, {}
  for g in granularities:
    opt = analysis.compute_optimal(result, grid, g, ladder)
    optimal[str(g)] = {k: v.tolist() for k, v in opt.items()}
    if g == 1:
      continue
    rows = []
    for c, n, d in zip(grid, opt["params"], opt["tokens"]):
      el = analysis.efficiency_leverage(result, n, ladder.exit_params(n, g),
                                        d, g, ladder)
      rows.append({"budget": float(c), "loss_ratio": el["loss_ratio"],
                   "compute_ratio": el["compute_ratio"]})
    leverage[str(g)] = rows
  return {"form": form, "budgets": grid.tolist(), "compute_optimal": optimal,
          "efficiency_leverage": leverage}


def format_report(report: dict) -> str:
  """Plain-text table of every fit."""
  lines = []
  for name, entry in report["fits"].items():
    held = entry.get("heldout_rmse_log")
    lines.append(
        f"== {name}: objective {entry['objective']:.7g}, rmse(log L) "
        f"{entry['rmse_log']:.4g}, converged {entry['converged']}"
        + (f", held-out rmse(log L) {held:.4g}" if held is not None else ""))
    boot = entry.get("bootstrap", {})
    intervals = boot.get("intervals", {})
    header = f"  {'param':<7}{'value':>14}"
    if intervals:
      header += f"   {int(round(100 * boot['level']))}% interval"
    lines.append(header)
    for k, v in entry["params"].items():
      row = f"  {k:<7}{v:>14.6g}"
      if k in intervals:
        lo, hi = intervals[k]
        row += f"   [{lo:.6g}, {hi:.6g}]"
      lines.append(row)
  if report.get("selected_form"):
    lines.append("held-out selection (leave one budget out) prefers: "
                 f"{report['selected_form']}")
  return "\n".join(lines)


def markdown(report: dict, figures: dict[str, str], root: str) -> str:
  """report.md: the fitted table, the selection and the figures."""
  out = ["# IsoFLOP sweep report", ""]
  out += ["| form | " + " | ".join(["E", "A", "B", "alpha", "beta", "gamma"])
          + " | objective | held-out rmse(log L) |",
          "|---" * 9 + "|"]
  for name, e in report["fits"].items():
    iv = e.get("bootstrap", {}).get("intervals", {})
    cells = []
    for k in ("E", "A", "B", "alpha", "beta", "gamma"):
      if k not in e["params"]:
        cells.append("")
        continue
      cell = f"{e['params'][k]:.4g}"
      if k in iv:
        cell += f" [{iv[k][0]:.4g}, {iv[k][1]:.4g}]"
      cells.append(cell)
    held = e.get("heldout_rmse_log")
    out.append(f"| {name} | " + " | ".join(cells) +
               f" | {e['objective']:.4g} | "
               f"{'' if held is None else f'{held:.4g}'} |")
  out.append("")
  if report.get("selected_form"):
    out.append(f"Held-out selection (leave one budget out) prefers "
               f"**{report['selected_form']}**.")
  out.append("Intervals: bootstrap percentile intervals (see fits.json).")
  out.append("")
  for name, path in figures.items():
    out += [f"## {name}", "", f"![{name}]({os.path.relpath(path, root)})", ""]
  return "\n".join(out)
