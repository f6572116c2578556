"""Fitting every form at once and reporting it (text, JSON, markdown)."""

from __future__ import annotations

import math
import os
import time
from typing import Callable

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
            backend: str = "jaxopt",
            log: Callable[[str], None] | None = None) -> dict:
  """Fits every form (of `forms`: names, one name, or None for those the
  table supports), with bootstrap intervals and held-out selection.

  `log`, if given, receives a line per step (fit, bootstrap, selection) with
  its seconds.

  Returns:
    JSON-ready {"fits": {form: {...}}, "selected_form": name or None,
    "selection_tied": the forms whose held-out errors tied with the lowest
    (`analysis.leave_one_budget_out`)}. A table of one budget has no held-out
    selection (selected_form None).
  """
  forms = (default_forms(table) if forms is None
           else forms_lib.form_names(forms))
  log = log or (lambda line: None)
  table = table_lib.as_table(table)
  budgets = len(np.unique(table_lib.budgets_of(table)))
  if "budget" not in table:
    log(f"  no budget column: {budgets} budgets from 6ND on a 0.05-decade "
        "grid, which splits an IsoFLOP profile whose FLOPs are not 6ND (exit "
        "heads, attention); give the column if the table has one")
  if n_boot and resample == "budget" and budgets < 5:
    log(f"  resampling whole budgets of only {budgets}: a replicate is one of "
        f"{math.comb(2 * budgets - 1, budgets)} tables, so the intervals are "
        "coarse; resample='point' resamples models")
  out = {}
  for name in forms:
    start = time.time()
    result = fit_lib.fit(table, name, huber_delta, backend=backend)
    entry = result.to_json()
    log(f"  {name}: fitted in {time.time() - start:.1f} s")
    if n_boot:
      start = time.time()
      boot = analysis.bootstrap(table, result, n_boot, resample=resample,
                                level=level, seed=seed)
      entry["bootstrap"] = boot.to_json()
      log(f"  {name}: {n_boot} bootstrap refits ({resample}s resampled) in "
          f"{time.time() - start:.1f} s, {boot.n_converged} converged")
    out[name] = entry
  unified = [f for f in forms if f in forms_lib.UNIFIED_FORMS]
  selected, tied = None, []
  if len(unified) > 1 and budgets < 2:
    log(f"  held-out selection skipped: it leaves one budget out at a time, "
        f"and the table has {budgets} budget")
  elif len(unified) > 1:
    start = time.time()
    selection = analysis.leave_one_budget_out(table, unified, huber_delta,
                                              backend)
    log(f"  held-out selection ({len(unified)} forms, leaving each budget "
        f"out) in {time.time() - start:.1f} s")
    for name, v in selection["forms"].items():
      out[name]["heldout_rmse_log"] = v["rmse_log"]
      if "no_fit_without" in v:
        out[name]["heldout_no_fit_without"] = v["no_fit_without"]
        log(f"  {name}: no finite fit without budget "
            + ", ".join(f"{c:g}" for c in v["no_fit_without"])
            + ": not checked held out, not selected")
    selected, tied = selection["best"], selection["tied"]
  return {"fits": out, "selected_form": selected, "selection_tied": tied,
          "huber_delta": huber_delta}


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
  over budgets from a third of the smallest to 100x the largest; the data's
  IsoFLOP minima (`minima_against_law`) and, for a per-exit table (with
  exit_params), the observed families' EL per budget (`observed_leverage`,
  as "observed_leverage": {G: [{"budget", "loss_ratio"}]})."""
  form = law_for_analysis(report)
  if form is None:
    return {}
  result = _result(report, form)
  grid = np.logspace(np.log10(min(budgets) / 3), np.log10(max(budgets) * 100),
                     12)

  def along(cs):
    optimal, leverage = {}, {}
    for g in granularities:
      opt = analysis.compute_optimal(result, cs, g, ladder)
      optimal[str(g)] = {k: v.tolist() for k, v in opt.items()}
      if g == 1:
        continue
      rows = []
      for c, n, d in zip(cs, opt["params"], opt["tokens"]):
        el = analysis.efficiency_leverage(result, n, ladder.exit_params(n, g),
                                          d, g, ladder)
        rows.append({"budget": float(c), "loss_ratio": el["loss_ratio"],
                     "compute_ratio": el["compute_ratio"]})
      leverage[str(g)] = rows
    return optimal, leverage

  optimal, leverage = along(grid)
  at_optimal, at_leverage = along(np.sort(np.asarray(budgets, np.float64)))
  out = {"form": form, "budgets": grid.tolist(), "compute_optimal": optimal,
         "efficiency_leverage": leverage,
         "at_sweep_budgets": {"compute_optimal": at_optimal,
                              "efficiency_leverage": at_leverage},
         **minima_against_law(result, table, ladder)}
  if "exit_params" in table_lib.as_table(table):
    as_rows = lambda per_g: {
        str(g): [{"budget": c, "loss_ratio": per_budget[c]}
                 for c in sorted(per_budget)]
        for g, per_budget in per_g.items()}
    per_model = _model_leverage(result, _models(table), ladder)
    out["observed_leverage"] = as_rows(_budget_means(per_model))
    out["observed_leverage_at_optimum"] = as_rows(
        _at_optimum(per_model, at_optimal))
  return out


def minima_against_law(result, table, ladder) -> dict:
  """The data's IsoFLOP minima (`analysis.isoflop_minima`) next to the law's
  N* at the same budget and G, and per G the exponent a of N_min ~ C^a over
  the bracketed budgets, the data's and the law's over the same budgets."""
  minima = analysis.isoflop_minima(table)
  for row in minima:
    row["law_params"] = float(analysis.compute_optimal(
        result, row["budget"], row["granularity"], ladder)["params"][0])
    row["tokens"] = None if not row["bracketed"] else float(
        row["budget"] / np.squeeze(ladder.train_flops_per_token(
            row["params"], row["granularity"])))
  exponents = {}
  for g in sorted({r["granularity"] for r in minima}):
    rows = [r for r in minima if r["granularity"] == g and r["bracketed"]]
    if len(rows) < 2:
      continue
    log_c = np.log([r["budget"] for r in rows])
    slope = lambda key: float(np.polyfit(
        log_c, np.log([r[key] for r in rows]), 1)[0])
    exponents[str(g)] = {"budgets": len(rows), "data": slope("params"),
                         "law": slope("law_params")}
  return {"isoflop_minima": minima, "minima_exponents": exponents}


def analyse_sweep(report: dict, table, sweep) -> None:
  """Adds report["analysis"] (`analyse`) and report["claims"] (`claims`)
  for an `isoflop.SweepConfig`'s ladder, budgets and granularities."""
  report["analysis"] = analyse(report, table, sweep.ladder, sweep.budgets,
                               sweep.granularities)
  report["claims"] = claims(report, table, sweep.ladder)


def _tie_note(report: dict) -> str:
  """' (tied with ...)' when held-out selection was a tie, else ''."""
  others = [f for f in report.get("selection_tied", [])
            if f != report.get("selected_form")]
  if not others:
    return ""
  return (f" (tied within {100 * analysis.TIE_RTOL:g}% with "
          f"{', '.join(others)}: fewest parameters, then the paper's form)")


def _heldout(entry: dict) -> str:
  """A fit's held-out error as the reports print it: the number, why there
  is none, or '' (no held-out selection was run)."""
  if entry.get("heldout_no_fit_without"):
    return ("none: no fit without budget " + ", ".join(
        f"{c:g}" for c in entry["heldout_no_fit_without"]))
  held = entry.get("heldout_rmse_log")
  return "" if held is None else f"{held:.4g}"


def format_report(report: dict) -> str:
  """Plain-text table of every fit."""
  lines = []
  if report.get("budgets"):
    lines.append("fitted to the points of budgets "
                 + ", ".join(f"{c:g}" for c in report["budgets"]) + " only")
  for name, entry in report["fits"].items():
    held = _heldout(entry)
    lines.append(
        f"== {name}: objective {entry['objective']:.7g}, rmse(log L) "
        f"{entry['rmse_log']:.4g}, converged {entry['converged']}"
        + (f", held-out rmse(log L) {held}" if held else ""))
    boot = entry.get("bootstrap", {})
    intervals = boot.get("intervals", {})
    header = f"  {'param':<7}{'value':>14}"
    if intervals:
      header += f"   {int(round(100 * boot['level']))}% interval"
      if "n_converged" in boot:
        header += (f" ({boot['n_converged']} of {boot['n_boot']} bootstrap "
                   "fits converged)")
    lines.append(header)
    for k, v in entry["params"].items():
      row = f"  {k:<7}{v:>14.6g}"
      if k in intervals:
        lo, hi = intervals[k]
        row += f"   [{lo:.6g}, {hi:.6g}]"
      lines.append(row)
  if report.get("selected_form"):
    lines.append("held-out selection (leave one budget out) prefers: "
                 f"{report['selected_form']}" + _tie_note(report))
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
    out.append(f"| {name} | " + " | ".join(cells) +
               f" | {e['objective']:.4g} | {_heldout(e)} |")
  out.append("")
  if report.get("selected_form"):
    out.append(f"Held-out selection (leave one budget out) prefers "
               f"**{report['selected_form']}**{_tie_note(report)}.")
  converged = [f"{name} {e['bootstrap']['n_converged']}/"
               f"{e['bootstrap']['n_boot']}"
               for name, e in report["fits"].items()
               if "n_converged" in e.get("bootstrap", {})]
  if not any("bootstrap" in e for e in report["fits"].values()):
    out.append("Intervals: none (fitted without a bootstrap).")
  else:
    out.append("Intervals: bootstrap percentile intervals (see fits.json)" + (
        f"; bootstrap fits converged: {', '.join(converged)}." if converged
        else "."))
  out.append("")
  alloc = allocation_rows(report)
  if alloc:
    out += ["## Compute-optimal allocation (fitted "
            f"{report['analysis']['form']} law, along the ladder)", "",
            "| G | C | N* | D* | D*/N* | predicted loss |", "|---" * 6 + "|"]
    out += [f"| {r['G']} | {r['budget']:.3g} | {r['params']:,.0f}"
            f"{_EDGE if r['at_edge'] else ''} | "
            f"{r['tokens']:,.0f} | {r['tokens_per_param']:.2f} | "
            f"{r['loss']:.4f} |" for r in alloc]
    if any(r["at_edge"] for r in alloc):
      out += ["", f"{_EDGE.strip()}: {_EDGE_NOTE}"]
    out.append("")
  minima = minima_rows(report)
  if minima:
    out += ["## IsoFLOP minima: the data against the law", "",
            "Each profile's minimum from the data alone (a parabola in log N "
            "through the lowest loss and two sizes on each side; Hoffmann et "
            "al.'s approach 2), where sizes on both sides of it were trained, "
            "next to the fitted law's N*. Unbracketed profiles give only a "
            "bound: their lowest loss is at the smallest or largest size.", "",
            "| G | C | sizes | lowest loss at N | N_min (data) | N* (law) | "
            "N_min / N* |", "|---" * 7 + "|"]
    out += [f"| {r['granularity']} | {r['budget']:.3g} | {r['points']} | "
            f"{r['lowest_params']:,.0f} | "
            + (f"{r['params']:,.0f} | {r['law_params']:,.0f} | "
               f"{r['params'] / r['law_params']:.2f} |" if r["bracketed"] else
               f"{_unbracketed(r)} | {r['law_params']:,.0f} | |")
            for r in minima]
    out.append("")
    exponents = report["analysis"].get("minima_exponents", {})
    if exponents:
      out += [f"G = {g}: N_min ~ C^{e['data']:.3f} from the data over "
              f"{e['budgets']} bracketed budgets; the law's N* ~ "
              f"C^{e['law']:.3f} over the same budgets." for g, e in
              exponents.items()] + [""]
  if report.get("claims"):
    out += ["## The paper's claims against this sweep", "",
            "| claim | fitted | observed | verdict |", "|---" * 4 + "|"]
    out += [f"| {c['claim']} | {c['fitted']} | {c['observed']} | "
            f"{c['verdict']} |" for c in report["claims"]]
    out.append("")
  for name, path in figures.items():
    out += [f"## {name}", "", f"![{name}]({os.path.relpath(path, root)})", ""]
  return "\n".join(out)


# Thresholds of the claims check (stated in report.md next to each verdict).
SMALL_GAMMA = 0.05   # 95% upper bound of gamma: at most 11% more loss at G = 8
SMALL_BRANCH = 0.01  # |observed deepest-exit ratio - 1| counted as "no harm"


def _models(table) -> dict:
  """Per-exit rows grouped by model: {(budget, N, G): {exit: row}}."""
  t = table_lib.as_table(table)
  budget = table_lib.budgets_of(t)
  models = {}
  for i in range(len(t["loss"])):
    key = (float(budget[i]), float(t["params"][i]), int(t["granularity"][i]))
    exit_ = int(t["exit"][i]) if "exit" in t else 1
    models.setdefault(key, {})[exit_] = {k: float(v[i]) for k, v in t.items()}
  return models


def _family_loss(exits: dict) -> float:
  """A model's family loss: the mean over its exits' rows."""
  return float(np.mean([r["loss"] for r in exits.values()]))


def _dense_partner(models, key, rtol=0.01):
  """The G = 1 model of the same budget whose N is within rtol of key's N
  (one depth: a family's N exceeds the dense N only by its exit norms)."""
  c, n, _ = key
  best = min(((abs(np.log(k[1] / n)), k) for k in models
              if k[0] == c and k[2] == 1), default=None)
  return models[best[1]] if best and best[0] <= rtol else None


def observed_leverage(result: fit_lib.FitResult, table, ladder
                      ) -> dict[int, dict[float, float]]:
  """Efficiency Leverage of the observed families, per G and budget.

  Each G > 1 model's observed family loss (mean over its exits) against the
  law's dense alternative (`analysis.efficiency_leverage`: G dense models of
  its sub-model sizes on its compute), averaged over the budget's models.

  Args:
    result: a unified-law fit.
    table: per-exit loss table with exit and exit_params columns.
    ladder: the sweep's `ShapeLadder`.

  Returns:
    {G: {budget: mean loss ratio}}, G ascending.
  """
  return _leverage(result, _models(table), ladder)


def _model_leverage(result, models, ladder
                    ) -> dict[int, dict[float, list[tuple[float, float]]]]:
  """Each G > 1 model's observed EL: {G: {budget: [(N, loss ratio)]}}, G
  ascending, N ascending."""
  per_g = {}
  for (c, n, g), exits in models.items():
    if g == 1:
      continue
    rows = [exits[e] for e in sorted(exits)]
    el = analysis.efficiency_leverage(
        result, rows[0]["params"], [r["exit_params"] for r in rows],
        rows[0]["tokens"], g, ladder,
        family_loss=_family_loss(exits),
        compute_ratio=False)
    per_g.setdefault(g, {}).setdefault(c, []).append((n, el["loss_ratio"]))
  return {g: {c: sorted(v) for c, v in per_g[g].items()} for g in sorted(per_g)}


def _budget_means(per_model) -> dict[int, dict[float, float]]:
  """`_model_leverage` averaged over each budget's models."""
  return {g: {c: float(np.mean([el for _, el in v])) for c, v in by_c.items()}
          for g, by_c in per_model.items()}


def _leverage(result, models, ladder) -> dict[int, dict[float, float]]:
  """`observed_leverage` of `_models` rows."""
  return _budget_means(_model_leverage(result, models, ladder))


def observed_leverage_at_optimum(result: fit_lib.FitResult, table, ladder,
                                 optimal: dict) -> dict[int, dict[float, float]]:
  """Observed Efficiency Leverage at the law's compute-optimal size.

  A budget's mean EL (`observed_leverage`) averages a fixed set of sizes,
  which sit above N* at low budgets and below it at high ones; EL also moves
  with a model's tokens per parameter. This reads each (G, budget)'s
  per-model EL at the law's N* instead, linear in log N between the two
  sampled sizes around it (profiles whose sizes do not bracket N* are left
  out).

  Args:
    result: a unified-law fit.
    table: per-exit loss table with exit and exit_params columns.
    ladder: the sweep's `ShapeLadder`.
    optimal: {str(G): {"budget": [...], "params": [N*...]}}, as in
      `analyse`'s "at_sweep_budgets"/"compute_optimal".

  Returns:
    {G: {budget: loss ratio at N*}}, G ascending.
  """
  return _at_optimum(_model_leverage(result, _models(table), ladder), optimal)


def _at_optimum(per_model, optimal) -> dict[int, dict[float, float]]:
  """`observed_leverage_at_optimum` of `_model_leverage` rows."""
  out = {}
  for g, by_c in per_model.items():
    opt = optimal.get(str(g))
    if opt is None:
      continue
    n_star = dict(zip(map(float, opt["budget"]), opt["params"]))
    for c, pts in sorted(by_c.items()):
      n, el = np.log([p[0] for p in pts]), [p[1] for p in pts]
      if c in n_star and len(pts) > 1 and n[0] <= np.log(n_star[c]) <= n[-1]:
        out.setdefault(g, {})[c] = float(np.interp(np.log(n_star[c]), n, el))
  return out


def seed_spread(report: dict, table, repeats, ladder) -> dict:
  """How far a sweep's observations move when it is trained again with
  other seeds (initialisation and data order).

  Args:
    report: `fit_all`'s report of `table`; its `law_for_analysis` gives the
      EL's dense alternative (not refitted per seed).
    table: per-exit loss table of the reference seed.
    repeats: per-exit tables of other seeds, of all or some of its points.
    ladder: the sweep's `ShapeLadder`.

  Returns:
    {"models": models (budget, N, G) present in every table, "seeds": number
    of tables, "log_loss_sd": pooled sample SD over seeds of the log of each
    model's family loss (mean over exits), "log_loss_range": the largest
    max - min of one model's, "leverage": {G: {budget: [observed EL per
    table, reference first]}} over the shared models (`observed_leverage`),
    "reference_leverage": `observed_leverage` of the whole reference table,
    "granularity_cost": {G: {budget: [mean family / dense loss at equal
    depth per table, reference first]}} over the shared models (a table's
    own cost of granularity, free of the law)}.
  """
  form = law_for_analysis(report)
  if form is None:
    raise ValueError("seed_spread needs a report with a unified law that "
                     "has a G term.")
  result = _result(report, form)
  all_models = [_models(t) for t in [table, *repeats]]
  shared = sorted(set.intersection(*(set(m) for m in all_models)))
  if not shared or len(all_models) < 2:
    raise ValueError("seed_spread needs repeats that share models (budget, N "
                     "and G) with the reference table.")
  logs = np.log([[_family_loss(m[k]) for m in all_models]
                 for k in shared])  # [models, seeds]
  levs = [_leverage(result, {k: m[k] for k in shared}, ladder)
          for m in all_models]
  costs = [_cost_of_granularity({k: m[k] for k in shared})
           for m in all_models]
  return {"models": len(shared), "seeds": len(all_models),
          "log_loss_sd": float(np.sqrt(np.mean(np.var(logs, axis=1,
                                                      ddof=1)))),
          "log_loss_range": float(np.max(np.ptp(logs, axis=1))),
          "leverage": {g: {c: [lev[g][c] for lev in levs] for c in levs[0][g]}
                       for g in levs[0]},
          "reference_leverage": _leverage(result, all_models[0], ladder),
          "granularity_cost": {g: {c: [cost[g][c] for cost in costs]
                                   for c in sorted(costs[0][g])}
                               for g in sorted(costs[0])}}


def format_seed_spread(spread: dict) -> str:
  """`seed_spread` as text, with each G's change of the reference seed's
  observed EL from its lowest budget to its highest, as a multiple of the
  seed SD at each repeated budget (the difference of two budgets' means has
  an SD at least as large as either's), and each seed's cost of
  granularity (family / dense loss at equal depth) at each repeated budget,
  with its change from the lowest to the highest of them."""
  lines = [f"seed spread: {spread['models']} models trained with "
           f"{spread['seeds']} seeds: SD of log family loss "
           f"{spread['log_loss_sd']:.4f} (pooled), largest range "
           f"{spread['log_loss_range']:.4f}"]
  for g, per_budget in spread["leverage"].items():
    reference = spread["reference_leverage"].get(g, {})
    cs = sorted(reference)
    change = reference[cs[-1]] - reference[cs[0]] if len(cs) > 1 else None
    for c, els in sorted(per_budget.items()):
      sd = float(np.std(els, ddof=1))
      line = (f"  G = {g}, C = {c:.3g}: observed EL per seed "
              + ", ".join(f"{e:.3f}" for e in els) + f" (SD {sd:.4f})")
      if change is not None and sd > 0:
        line += (f"; reference seed from C = {cs[0]:.3g} to {cs[-1]:.3g}: "
                 f"{change:+.3f} ({abs(change) / sd:.1f}x this SD)")
      lines.append(line)
  for g, per_budget in spread["granularity_cost"].items():
    for c, ratios in per_budget.items():
      lines.append(f"  G = {g}, C = {c:.3g}: family / dense loss at equal "
                   "depth per seed " + ", ".join(f"{r:.4f}" for r in ratios)
                   + f" (SD {np.std(ratios, ddof=1):.4f})")
    cs = list(per_budget)
    if len(cs) > 1:
      lines.append(
          f"  G = {g}: change from C = {cs[0]:.3g} to {cs[-1]:.3g} per seed "
          + ", ".join(f"{b - a:+.4f}" for a, b in zip(per_budget[cs[0]],
                                                      per_budget[cs[-1]])))
  return "\n".join(lines)


def _minima_of(models: dict) -> list[dict]:
  """`analysis.isoflop_minima` of `_models` rows."""
  keys = sorted(models)
  first = [next(iter(models[k].values())) for k in keys]
  return analysis.isoflop_minima({
      "budget": [k[0] for k in keys], "params": [k[1] for k in keys],
      "granularity": [k[2] for k in keys],
      "tokens": [r["tokens"] for r in first],
      "loss": [_family_loss(models[k]) for k in keys]})


def _pairs(models: dict):
  """(key, exits, dense partner's exits) of each G > 1 model that has a dense
  partner (same budget and depth, `_dense_partner`), in `models` order."""
  for key, exits in models.items():
    dense = _dense_partner(models, key) if key[2] > 1 else None
    if dense is not None:
      yield key, exits, dense


def dense_partners(table) -> list[dict]:
  """Each G > 1 model of a loss table beside its dense partner, the G = 1
  model of the same budget and depth (its N within 1%: a family's N exceeds
  the dense N only by its exit norms). Needs no law and no shape column.

  Returns:
    [{"granularity", "budget", "params", "tokens", "loss" (the family loss:
    the mean over its exits), "dense_params", "dense_tokens", "dense_loss"}],
    one per pair, in the table's order of models.
  """
  out = []
  for (c, _, g), exits, dense in _pairs(_models(table)):
    row, dense_row = next(iter(exits.values())), next(iter(dense.values()))
    out.append({"granularity": g, "budget": c, "params": row["params"],
                "tokens": row["tokens"], "loss": _family_loss(exits),
                "dense_params": dense_row["params"],
                "dense_tokens": dense_row["tokens"],
                "dense_loss": _family_loss(dense)})
  return out


def _granularity_ratios(models: dict) -> dict[int, dict[float, list[float]]]:
  """Each G > 1 model's family loss over its dense partner's (`_pairs`):
  {G: {budget: [ratio]}}, in `models` order."""
  out = {}
  for key, exits, dense in _pairs(models):
    out.setdefault(key[2], {}).setdefault(key[0], []).append(
        _family_loss(exits) / _family_loss(dense))
  return out


def _cost_of_granularity(models: dict) -> dict[int, dict[float, float]]:
  """`_granularity_ratios` averaged per budget: {G: {budget: ratio}}."""
  return {g: {c: float(np.mean(v)) for c, v in by_c.items()}
          for g, by_c in _granularity_ratios(models).items()}


def granularity_cost(table) -> dict[int, dict[float, float]]:
  """The cost of granularity in a loss table, free of any law: per G > 1 and
  budget, the mean over depths of a family's loss (mean over its exits) over
  the dense model's of the same budget and depth: {G: {budget: ratio}}."""
  cost = _cost_of_granularity(_models(table))
  return {g: dict(sorted(cost[g].items())) for g in sorted(cost)}


def _best_settings(tables: dict, reference: str, caller: str):
  """The settings in order (the reference first), each one's `_models`, the
  reference's models that another setting also trained, and per such model
  the setting with the lowest family loss (ties go to the first in order)."""
  if reference not in tables:
    raise ValueError(f"{caller}: the reference {reference!r} is not among "
                     f"the tables {sorted(tables)}.")
  if len(tables) < 2:
    raise ValueError(f"{caller} needs the reference and at least one other "
                     "setting.")
  labels = [reference] + [k for k in tables if k != reference]
  models = {s: _models(tables[s]) for s in labels}
  shared = sorted(set(models[reference]).intersection(
      set().union(*(models[s] for s in labels[1:]))))
  if not shared:
    raise ValueError(f"{caller}: the other tables share no models (budget, N "
                     "and G) with the reference; they must be runs of the "
                     "same sweep's points.")
  best = {k: min((s for s in labels if k in models[s]),
                 key=lambda s: (_family_loss(models[s][k]), labels.index(s)))
          for k in shared}
  return labels, models, shared, best


def best_of(tables: dict, reference: str) -> tuple[table_lib.Table,
                                                    list[str]]:
  """Every model of the reference at the setting that trained it best.

  The table a sweep would have given had each model been trained with the
  best of the settings tried for it (`setting_check`'s choice: the lowest
  family loss, ties to the reference, then to the first). Models no other
  setting trained keep the reference's rows. A minimum over noisy runs is
  biased low, the more so the more settings a model had, so a law fitted to
  this is optimistic where more settings were tried.

  Args:
    tables: {label: loss table}, the reference among them.
    reference: the label of the sweep's own setting.

  Returns:
    (table, settings): the chosen models' rows (per-exit rows where the
    tables have them; the columns all the tables have), and each row's label.
  """
  labels, models, _, best = _best_settings(tables, reference, "best_of")
  have = {s: list(table_lib.as_table(tables[s])) for s in labels}
  columns = [c for c in have[reference] if all(c in have[s] for s in labels)]
  rows, settings = [], []
  for key in sorted(models[reference]):
    label = best.get(key, reference)
    for _, row in sorted(models[label][key].items()):
      rows.append(row)
      settings.append(label)
  return {c: np.array([r[c] for r in rows]) for c in columns}, settings


def setting_check(tables: dict, reference: str, report: dict | None = None,
                  ladder=None) -> dict:
  """Whether a sweep's one training setting (say its learning rate) decides
  where its IsoFLOP minima lie and what granularity costs.

  A sweep trains every size with the same hyperparameters; if the best
  setting differs by size, each profile's minimum moves when every size gets
  its own best. Given some of the same models trained with other settings,
  this compares the reference's models that at least one other table also
  has (the settings tried may differ by budget): per size the setting with
  the lowest family loss (mean over exits) among those that trained it, each
  profile's minimum (`analysis.isoflop_minima`) with the reference setting
  throughout and with each size's best, and the mean family / dense loss
  ratio at equal budget and depth (the cost of granularity) both ways, each
  model at its own best setting.

  Args:
    tables: {label: loss table (per-exit rows or family rows)}, the
      reference among them; the others keep their order (ties go to the
      reference, then to the first).
    reference: the label of the sweep's own setting.
    report, ladder: optionally `fit_all`'s report of the reference table and
      the sweep's `ShapeLadder`, to set the law's N* (`law_for_analysis`)
      beside each profile.

  Returns:
    {"settings": labels, reference first, "reference": its label, "models":
    number compared, "profiles": [{"budget", "granularity", "sizes": [{
    "params", "losses": {label: family loss of each setting that trained
    it}, "best": label}] (N ascending), "reference_minimum", "best_minimum":
    `isoflop_minima` rows, "law_params" (N*, or None)}], "granularity_cost":
    {G: {budget: {"reference": ratio, "best": ratio}}}}.
  """
  form = law_for_analysis(report) if report and ladder is not None else None
  result = _result(report, form) if form else None
  labels, models, shared, best = _best_settings(tables, reference,
                                                "setting_check")
  loss = {s: {k: _family_loss(models[s][k]) for k in shared
              if k in models[s]} for s in labels}
  ref = {k: models[reference][k] for k in shared}
  tuned = {k: models[best[k]][k] for k in shared}
  profiles = []
  for r_min, b_min in zip(_minima_of(ref), _minima_of(tuned)):
    c, g = r_min["budget"], r_min["granularity"]
    sizes = [{"params": k[1], "losses": {s: loss[s][k] for s in labels
                                         if k in loss[s]},
              "best": best[k]} for k in shared if k[0] == c and k[2] == g]
    law = None
    if result is not None:
      law = float(analysis.compute_optimal(result, c, g, ladder)["params"][0])
    profiles.append({"budget": c, "granularity": g, "sizes": sizes,
                     "reference_minimum": r_min, "best_minimum": b_min,
                     "law_params": law})
  cost_ref, cost_best = _cost_of_granularity(ref), _cost_of_granularity(tuned)
  return {"settings": labels, "reference": reference, "models": len(shared),
          "profiles": profiles,
          "granularity_cost": {g: {c: {"reference": v, "best": cost_best[g][c]}
                                   for c, v in by_c.items()}
                               for g, by_c in cost_ref.items()}}


def _minimum_text(row: dict) -> str:
  return (f"N_min {row['params']:,.0f}" if row["bracketed"]
          else _unbracketed(row))


def format_setting_check(check: dict) -> str:
  """`setting_check` as text."""
  ref = check["reference"]
  lines = [f"settings: {ref} (the sweep's), "
           + ", ".join(s for s in check["settings"] if s != ref)
           + f"; {check['models']} models trained with the first and at least "
           "one other"]
  for p in check["profiles"]:
    lines.append(f"  G = {p['granularity']}, C = {p['budget']:.3g}: the best "
                 f"setting per size, the family loss of each (the best's "
                 f"change against {ref}):")
    lines += [f"    N = {s['params']:>9,.0f}: {s['best']:<12} "
              + ", ".join(f"{k} {v:.4f}" for k, v in s["losses"].items())
              + (f" ({s['losses'][s['best']] / s['losses'][ref] - 1:+.2%})"
                 if s["best"] != ref else "")
              for s in p["sizes"]]
    line = (f"    minimum: {_minimum_text(p['reference_minimum'])} with "
            f"{ref}, {_minimum_text(p['best_minimum'])} with each size's best")
    if p["law_params"] is not None:
      line += f" (the law's N* {p['law_params']:,.0f})"
    lines.append(line)
  for g, by_c in sorted(check["granularity_cost"].items()):
    for c, r in sorted(by_c.items()):
      lines.append(f"  G = {g}, C = {c:.3g}: family / dense loss at equal "
                   f"depth {r['reference']:.4f} with {ref}, {r['best']:.4f} "
                   "with each model's best")
  return "\n".join(lines)


def claims(report: dict, table, ladder) -> list[dict]:
  """The paper's three claims, checked against a sweep's fits and raw data.

  Each entry: {"claim", "fitted", "observed", "verdict"} (plain text).
  Observed comparisons pair models of one budget and one depth (N within 1%)
  that differ only in G (the G-exit family trains on fewer tokens, as its exit
  heads cost FLOPs: the IsoFLOP comparison the paper makes).
  """
  out = []
  fits = report["fits"]
  form = law_for_analysis(report)
  models = _models(table)
  dense = {k: partner for k, _, partner in _pairs(models)}
  by_budget = _granularity_ratios(models)
  deepest = {k: models[k][max(models[k])] for k in dense}
  gs = sorted({k[2] for k in models if k[2] > 1})

  # 1. gamma is small.
  if form is not None:
    entry = fits[form]
    gamma = entry["params"]["gamma"]
    lo, hi = entry.get("bootstrap", {}).get("intervals", {}).get(
        "gamma", (float("nan"), float("nan")))
    g_max = max(gs) if gs else 1
    ratios = {g: [r for rs in by_budget.get(g, {}).values() for r in rs]
              for g in gs}
    observed = "; ".join(
        f"G = {g}: family/dense loss {np.mean(r):.3f} (range {np.min(r):.3f} "
        f"to {np.max(r):.3f}, {len(r)} pairs)" for g, r in ratios.items() if r)
    verdict = ("holds" if hi < SMALL_GAMMA else
               "does not hold" if lo >= SMALL_GAMMA else "undecided")
    out.append({
        "claim": "gamma is small (granularity is nearly free)",
        "fitted": f"{form}: gamma = {gamma:.4f}{_interval(lo, hi, '.4f')}; "
                  f"G^gamma at G = {g_max}: {g_max ** gamma:.3f}"
                  f"{_interval(g_max ** lo, g_max ** hi, '.3f')}",
        "observed": observed,
        "verdict": f"{verdict} (threshold: 95% upper bound < {SMALL_GAMMA})"
                   + ("; no interval without a bootstrap" if np.isnan(hi)
                      else "")})

  # 2. Efficiency Leverage > 1, most in low compute (judged over the sweep's
  # own budgets; the 100x extrapolation is shown beside it).
  a = report.get("analysis", {})
  lev = a.get("at_sweep_budgets", {}).get("efficiency_leverage", {})
  if form is not None and lev:
    result = _result(report, form)
    parts, ok, low_most = [], True, True
    for g, rows in lev.items():
      el = np.array([r["loss_ratio"] for r in rows])
      c = np.array([r["budget"] for r in rows])
      ok &= bool(np.all(el > 1))
      low_most &= bool(el[0] > el[-1])
      far = a["efficiency_leverage"][g][-1]
      parts.append(f"G = {g}: {el[0]:.3f} at C = {c[0]:.2g} to {el[-1]:.3f} "
                   f"at C = {c[-1]:.2g} ({far['loss_ratio']:.3f} at "
                   f"{far['budget']:.2g}, extrapolated)")
    observed, observed_falls = [], []
    per_model = _model_leverage(result, models, ladder)
    for g, per_budget in _budget_means(per_model).items():
      cs = sorted(per_budget)
      means = [per_budget[c] for c in cs]
      observed.append(f"G = {g}: " + ", ".join(f"{m:.3f}" for m in means))
      if len(means) > 1:  # the least-squares trend over log C
        observed_falls.append(bool(np.polyfit(np.log(cs), means, 1)[0] < 0))
    at_opt = _at_optimum(
        per_model, a.get("at_sweep_budgets", {}).get("compute_optimal", {}))
    at_opt_text = "; ".join(
        f"G = {g}: " + ", ".join(f"{per_c[c]:.3f} ({c:.2g})"
                                 for c in sorted(per_c))
        for g, per_c in at_opt.items())
    budgets = sorted({k[0] for k in models})
    # With more than one budget the observed trend must agree with the fit's
    # (the same sign of the slope over log C for every G) for a verdict.
    if not ok:
      verdict = "does not hold"
    elif all(falls == low_most for falls in observed_falls):
      verdict = ("holds" if low_most else
                 "EL > 1 holds, but it does not fall with compute")
    else:
      moves = ("falls" if all(observed_falls) else
               "rises" if not any(observed_falls) else "moves both ways")
      verdict = ("EL > 1 holds; whether it is largest at low compute is "
                 "undecided: along the fitted law it "
                 + ("falls" if low_most else "does not fall")
                 + f" with compute, the observed family losses' EL {moves}")
    out.append({
        "claim": "Efficiency Leverage > 1, largest at low compute",
        "fitted": "loss ratio along the compute-optimal ladder, " +
                  "; ".join(parts),
        "observed": "observed family loss against the law's dense "
                    "alternative, mean per budget ("
                    + ", ".join(f"{c:.2g}" for c in budgets) + "): "
                    + "; ".join(observed)
                    + (f". At the law's N* (interpolated in log N between "
                       f"the sizes around it): {at_opt_text}"
                       if at_opt_text else ""),
        "verdict": verdict})

  # 3. Upstream branches do not hurt later exits.
  if gs:
    ratios = [deepest[k]["loss"] / partner[1]["loss"]
              for k, partner in dense.items()]
    # The family sees fewer tokens than its IsoFLOP partner (its exit heads
    # cost FLOPs); against the fitted dense law at the family's own tokens
    # only the upstream exits differ.
    same_d = []
    if form is not None:
      law = _result(report, form)
      same_d = [deepest[k]["loss"] / np.squeeze(law.predict(
          partner[1]["params"], deepest[k]["tokens"], 1))
                for k, partner in dense.items()]
    mean = float(np.mean(same_d or ratios)) if ratios else float("nan")
    fitted = ""
    if "branch" in fits:
      b = fits["branch"]
      lo, hi = b.get("bootstrap", {}).get("intervals", {}).get(
          "gamma", (float("nan"), float("nan")))
      fitted = (f"branch law: exponent of g = {b['params']['gamma']:.4f}"
                f"{_interval(lo, hi, '.4f')}")
    verdict = ("holds" if abs(mean - 1) <= SMALL_BRANCH else
               "does not hold: the deepest exit is worse" if mean > 1 else
               "holds: the deepest exit is even better")
    out.append({
        "claim": "upstream branches do not hurt later exits",
        "fitted": fitted,
        "observed": (f"deepest exit of a G > 1 family over the dense model "
                     f"of the same budget and depth: mean {np.mean(ratios):.4f}"
                     f" (range {np.min(ratios):.4f} to {np.max(ratios):.4f}, "
                     f"{len(ratios)} pairs)" + (
                         f"; over the fitted dense law at the family's own "
                         f"tokens: mean {np.mean(same_d):.4f} (range "
                         f"{np.min(same_d):.4f} to {np.max(same_d):.4f})"
                         if same_d else "")) if ratios else "no pairs",
        "verdict": f"{verdict} (threshold: within {SMALL_BRANCH:.0%} of 1"
                   + (", at equal tokens)" if same_d else ")")})
  return out


def _interval(lo: float, hi: float, spec: str) -> str:
  """' [lo, hi]' formatted with spec, or a note where there is no interval
  (NaN: the fit had no bootstrap)."""
  if np.isnan(lo) or np.isnan(hi):
    return " (no bootstrap interval)"
  return f" [{lo:{spec}}, {hi:{spec}}]"


_EDGE = " (edge)"
_EDGE_NOTE = ("the predicted loss was lowest at an end of the N range "
              "searched, so N* is that end and the optimum lies at or beyond "
              "it.")


def format_analysis(report: dict) -> str:
  """Plain-text compute-optimal allocation and claims check of a report."""
  lines = []
  alloc = allocation_rows(report)
  if alloc:
    lines.append(f"compute-optimal allocation ({report['analysis']['form']} "
                 "law along the ladder):")
    lines.append(f"  {'G':>2} {'C':>9} {'N*':>10} {'D*':>12} {'D*/N*':>7}")
    lines += [f"  {r['G']:>2} {r['budget']:>9.3g} {r['params']:>10,.0f} "
              f"{r['tokens']:>12,.0f} {r['tokens_per_param']:>7.2f}"
              f"{_EDGE if r['at_edge'] else ''}" for r in alloc]
    if any(r["at_edge"] for r in alloc):
      lines.append(f"  {_EDGE.strip()}: {_EDGE_NOTE}")
  minima = minima_rows(report)
  if minima:
    lines.append("IsoFLOP minima from the data (parabola in log N) against "
                 "the law's N*:")
    lines.append(f"  {'G':>2} {'C':>9} {'N_min':>10} {'N*':>10} {'ratio':>6}")
    lines += [f"  {r['granularity']:>2} {r['budget']:>9.3g} "
              + (f"{r['params']:>10,.0f} {r['law_params']:>10,.0f} "
                 f"{r['params'] / r['law_params']:>6.2f}" if r["bracketed"]
                 else f"{'-':>10} {r['law_params']:>10,.0f}   "
                      f"({_unbracketed(r)})")
              for r in minima]
    lines += [f"  G = {g}: exponent of C in N_min {e['data']:.3f} (data, "
              f"{e['budgets']} budgets), {e['law']:.3f} (law)" for g, e in
              report["analysis"].get("minima_exponents", {}).items()]
  for c in report.get("claims", []):
    lines += [f"claim: {c['claim']}: {c['verdict']}",
              f"  fitted: {c['fitted']}", f"  observed: {c['observed']}"]
  return "\n".join(lines)


def allocation_rows(report: dict) -> list[dict]:
  """N*, D* and D*/N* per G at the sweep's own budgets."""
  a = report.get("analysis", {}).get("at_sweep_budgets", {})
  rows = []
  for g, opt in a.get("compute_optimal", {}).items():
    at_edge = opt.get("at_edge") or [False] * len(opt["budget"])
    for i, c in enumerate(opt["budget"]):
      rows.append({"G": int(g), "budget": c, "params": opt["params"][i],
                   "tokens": opt["tokens"][i],
                   "tokens_per_param": opt["tokens"][i] / opt["params"][i],
                   "loss": opt["loss"][i],
                   "at_edge": bool(at_edge[i])})
  return rows


def minima_rows(report: dict) -> list[dict]:
  """The IsoFLOP minima of `minima_against_law` in a report (or [])."""
  return report.get("analysis", {}).get("isoflop_minima", [])


def _unbracketed(row: dict) -> str:
  """Why an IsoFLOP profile has no N_min."""
  if row["edge"]:
    return f"lowest loss at the {row['edge']} size"
  return "no convex minimum"
