"""The paper-style figures, from a sweep's loss table and its fitted laws.

The figures of a sweep's report (`draw_all`) take a loss table (a sweep's
per-exit `ResultsStore.table()` or any table `laws.fit` takes) and the report
of `laws.report.fit_all` (+ `analyse_sweep`), and each writes one PNG, or
returns None where the table or report lacks what it draws. `setting_check`
and `granularity_cost` draw the comparisons of `experiments/fit_law.py`.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from familial_jax.laws import analysis as analysis_lib  # noqa: E402
from familial_jax.laws import forms as forms_lib  # noqa: E402
from familial_jax.laws import report as report_lib  # noqa: E402
from familial_jax.laws import table as table_lib  # noqa: E402
from familial_jax.results import atomic_write  # noqa: E402


def _predict(report, form, n, d, g):
  return forms_lib.get_form(form).predict(report["fits"][form]["params"], n, d,
                                          g)


def _colors(n):
  return plt.cm.viridis(np.linspace(0, 0.9, max(n, 1)))


_MAX_LEGEND = 8  # budgets named in a legend; more get a colour bar


def _save(fig, path, rect=None):
  fig.tight_layout(rect=rect)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def bracketed_minima(table, report) -> dict:
  """{(G, budget): row} of the IsoFLOP profiles that bracket their minimum
  (`laws.isoflop_minima` rows): the report's sweep analysis, or without one
  (a plain table given to fit_law) the data's own."""
  rows = (report.get("analysis") or {}).get("isoflop_minima")
  if rows is None:
    rows = analysis_lib.isoflop_minima(table)
  return {(r["granularity"], r["budget"]): r for r in rows if r["bracketed"]}


def isoflop_curves(table, report, form, path):
  """Family loss against N, one line per budget, one panel per G; the
  fitted law dashed; a star at each bracketed profile's own minimum
  (`laws.isoflop_minima`)."""
  table = table_lib.as_table(table)
  minima = bracketed_minima(table, report)
  fam = table_lib.family_table(table)
  fam = dict(fam, budget=table_lib.budgets_of(fam))  # the table's, or 6ND
  gs = np.unique(fam["granularity"])
  budgets = np.unique(fam["budget"])
  fig, axes = plt.subplots(1, len(gs), figsize=(4 * len(gs), 3.4),
                           sharex=True, sharey=True, squeeze=False)
  # A legend entry per budget up to 8; beyond (say a table that is not an
  # IsoFLOP design, whose 6ND budgets are many) a colour bar of log C.
  scale = None
  if len(budgets) > _MAX_LEGEND:
    scale = plt.cm.ScalarMappable(
        matplotlib.colors.LogNorm(budgets.min(), budgets.max()),
        matplotlib.colors.ListedColormap(_colors(256)))
  colors = (_colors(len(budgets)) if scale is None else
            scale.to_rgba(budgets))
  for ax, g in zip(axes[0], gs):
    for color, c in zip(colors, budgets):
      m = (fam["granularity"] == g) & (fam["budget"] == c)
      order = np.argsort(fam["params"][m])
      n, d, l = (fam[k][m][order] for k in ("params", "tokens", "loss"))
      ax.plot(n, l, "o", color=color, label=f"C={c:.3g}")
      if form and len(n) > 1:
        ns = np.geomspace(n.min(), n.max(), 50)
        ds = np.exp(np.interp(np.log(ns), np.log(n), np.log(d)))
        ax.plot(ns, _predict(report, form, ns, ds, g), "--", color=color)
      best = minima.get((int(g), float(c)))
      if best:
        ax.plot(best["params"], best["loss"], "*", color=color, ms=10,
                mec="k", mew=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("N (non-embedding parameters)")
    ax.set_title(f"G = {int(g)}")
  axes[0][0].set_ylabel("family loss (nats/token)")
  if scale is None:
    axes[0][-1].legend(fontsize=7)
  else:
    fig.colorbar(scale, ax=axes[0][-1], label=f"C ({len(budgets)} budgets)")
  return _save(fig, path)


def law_fit(table, report, form, path):
  """Observed against predicted family loss for every unified form, each
  labelled with its held-out error where the report has one."""
  if not any(f in report["fits"] for f in forms_lib.UNIFIED_FORMS):
    return None
  fam = table_lib.family_table(table_lib.as_table(table))
  fig, ax = plt.subplots(figsize=(4.2, 4))
  for name, marker in (("chinchilla", "o"), ("multiplicative", "s"),
                       ("reducible", "^")):
    if name in report["fits"]:
      pred = _predict(report, name, fam["params"], fam["tokens"],
                      fam["granularity"])
      heldout = report["fits"][name].get("heldout_rmse_log")
      label = name if heldout is None else (
          f"{name} (held-out rmse log L {heldout:.4f})")
      ax.plot(pred, fam["loss"], marker, ms=4, mfc="none", alpha=0.7,
              label=label)
  lo, hi = fam["loss"].min(), fam["loss"].max()
  ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
  ax.set_xlabel("predicted loss")
  ax.set_ylabel("observed loss")
  ax.set_title(f"fitted laws (selected: {report.get('selected_form')})")
  ax.legend(fontsize=7)
  return _save(fig, path)


def granularity_pairs(table, report=None) -> dict[str, np.ndarray]:
  """Each G > 1 model beside the G = 1 model of its budget and depth
  (`laws.report.dense_partners`): {"granularity", "observed" (family loss
  over the dense loss), and with a multiplicative fit in `report`, "law" (its
  ratio for the same pair: the family's N and tokens against the dense
  model's)}."""
  pairs = sorted(report_lib.dense_partners(table), key=lambda p: (
      p["budget"], p["params"], p["granularity"]))  # drawn in this order
  col = lambda k: np.array([p[k] for p in pairs], np.float64)
  g = col("granularity")
  out = {"granularity": g, "observed": col("loss") / col("dense_loss")}
  if report is not None and "multiplicative" in report["fits"] and pairs:
    out["law"] = (
        _predict(report, "multiplicative", col("params"), col("tokens"), g) /
        _predict(report, "multiplicative", col("dense_params"),
                 col("dense_tokens"), 1))
  return out


def granularity_penalty(table, report, path):
  """Family loss at G over that at G = 1 for the same budget and shape
  (`granularity_pairs`), with the fitted G^gamma (equal N and D) and its
  interval, and the multiplicative law's ratio for the same pairs (the
  family also trains on fewer tokens: its exit heads cost FLOPs)."""
  table = table_lib.as_table(table)
  if not np.any(table["granularity"] > 1):
    return None
  pairs = granularity_pairs(table, report)
  xs, ys = pairs["granularity"], pairs["observed"]
  gs = np.linspace(1, np.max(table["granularity"]), 50)
  fig, ax = plt.subplots(figsize=(4.6, 3.6))
  ax.plot(xs, ys, "o", alpha=0.6, label="observed (same C and shape)")
  if "multiplicative" in report["fits"]:
    fit = report["fits"]["multiplicative"]
    gamma = fit["params"]["gamma"]
    ax.plot(gs, gs ** gamma, "-", label=f"G^gamma, gamma = {gamma:.4f}")
    iv = fit.get("bootstrap", {}).get("intervals", {})
    if "gamma" in iv:
      ax.fill_between(gs, gs ** iv["gamma"][0], gs ** iv["gamma"][1],
                      alpha=0.2, label="95% interval")
    if "law" in pairs:
      ax.plot(xs + 0.12, pairs["law"], "x", color="k", alpha=0.6,
              label="law, same pairs (fewer tokens at G > 1)")
  ax.axhline(1, color="k", lw=0.6)
  ax.set_xlabel("G (exits)")
  ax.set_ylabel("loss(G) / loss(G = 1)")
  ax.legend(fontsize=7)
  return _save(fig, path)


def compute_optimal(table, report, path):
  """N* and D* against C for every G (the fitted law, where its optimum is
  inside the N range searched), with the IsoFLOP
  minima of the data: filled where a profile brackets its minimum (its
  parabola vertex), open where its lowest loss is at an end of the sizes
  (only a bound)."""
  an = report.get("analysis") or {}
  if not an:
    return None
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.4))
  gs = sorted(an["compute_optimal"], key=int)
  for color, g in zip(_colors(len(gs)), gs):
    opt = an["compute_optimal"][g]
    # N* pinned to an end of the range searched is not an optimum: not drawn.
    edge = np.asarray(opt.get("at_edge", False), bool)
    for ax, key in ((a1, "params"), (a2, "tokens")):
      ax.plot(opt["budget"], np.where(edge, np.nan, opt[key]), "-",
              color=color, label=f"G={g}")
    for r in an.get("isoflop_minima", []):
      if r["granularity"] != int(g):
        continue
      n, d = ((r["params"], r["tokens"]) if r["bracketed"] else
              (r["lowest_params"], r["lowest_tokens"]))
      style = dict(color=color, mfc=color if r["bracketed"] else "none")
      a1.plot(r["budget"], n, "o", **style)
      a2.plot(r["budget"], d, "o", **style)
  for ax, name in ((a1, "N*"), (a2, "D*")):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("C (training FLOPs)")
    ax.set_ylabel(name)
  a1.legend(fontsize=7)
  a1.set_title(f"compute-optimal allocation ({an['form']} law)")
  a2.legend(handles=[
      plt.Line2D([], [], ls="", marker="o", color="gray",
                 label="data: minimum of the IsoFLOP profile"),
      plt.Line2D([], [], ls="", marker="o", color="gray", mfc="none",
                 label="data: lowest loss at an end (a bound)")], fontsize=7)
  return _save(fig, path)


def branch_law(table, report, path):
  """Per-exit loss over the branch law without its exit term, against g.

  The branch law is L_g = L(N_g, D) * g^gamma_b; dividing each exit's
  observed loss by the fitted L(N_g, D) leaves what the exits before it cost
  (1 = nothing), next to the fitted g^gamma_b and its interval.
  """
  if "branch" not in report["fits"] or "exit" not in table:
    return None
  table = table_lib.as_table(table)
  entry = report["fits"]["branch"]
  law = forms_lib.get_form("branch")
  base = law.predict(entry["params"], table["exit_params"], table["tokens"], 1)
  ratio = table["loss"] / base
  fig, ax = plt.subplots(figsize=(4.6, 3.6))
  ax.plot(table["exit"], ratio, "o", ms=4, alpha=0.4,
          label="observed / L(N_g, D)")
  g = np.linspace(1, table["exit"].max(), 50)
  gamma = entry["params"]["gamma"]
  ax.plot(g, g ** gamma, "-", label=f"g^gamma_b, gamma_b = {gamma:.4f}")
  lo_hi = entry.get("bootstrap", {}).get("intervals", {}).get("gamma")
  if lo_hi:
    ax.fill_between(g, g ** lo_hi[0], g ** lo_hi[1], alpha=0.2,
                    label="95% interval")
  ax.axhline(1.0, color="k", lw=0.8)
  ax.set_xlabel("g (exit index)")
  ax.set_ylabel("exit loss / L(N_g, D)")
  ax.set_title("branch law: cost of the upstream exits")
  ax.legend(fontsize=7)
  return _save(fig, path)


def efficiency_leverage(report, path):
  """EL (loss ratio) against compute for every G > 1: along the fitted law's
  compute-optimal ladder (lines), and the observed families' mean per budget
  against the law's dense alternative (open markers) and their EL at the
  law's N* (filled squares), where the report has them."""
  an = report.get("analysis") or {}
  if not an.get("efficiency_leverage"):
    return None
  gs = sorted(an["efficiency_leverage"], key=int)
  observed = an.get("observed_leverage") or {}
  at_optimum = an.get("observed_leverage_at_optimum") or {}
  fig, ax = plt.subplots(figsize=(5.2, 4.4) if at_optimum else (4.6, 3.6))
  for color, g in zip(_colors(len(gs)), gs):
    rows = an["efficiency_leverage"][g]
    ax.plot([r["budget"] for r in rows], [r["loss_ratio"] for r in rows],
            ".-", color=color, label=f"G={g}, law")
    if g in observed:
      ax.plot([r["budget"] for r in observed[g]],
              [r["loss_ratio"] for r in observed[g]], "o--", color=color,
              mfc="none", label=f"G={g}, observed mean")
    if at_optimum.get(g):
      ax.plot([r["budget"] for r in at_optimum[g]],
              [r["loss_ratio"] for r in at_optimum[g]], "s", color=color,
              label=f"G={g}, observed at N*")
  ax.axhline(1, color="k", lw=0.6)
  ax.set_xscale("log")
  ax.set_xlabel("C (training FLOPs)")
  ax.set_ylabel("EL = mean dense loss / family loss")
  ax.set_title("Efficiency Leverage")
  if at_optimum:  # 3 entries per G: under the axes
    ax.legend(fontsize=6, ncol=len(gs), loc="upper center",
              bbox_to_anchor=(0.5, -0.2))
  else:
    ax.legend(fontsize=6, ncol=2 if observed else 1)
  return _save(fig, path)


def setting_check(check: dict, path):
  """`laws.report.setting_check` drawn: one panel per IsoFLOP profile (rows
  G, columns budget), family loss against N for every setting at the sizes
  it trained (the sweep's own in black), and each profile's minimum with
  the sweep's setting (black star) and with each size's best (red star);
  the law's N* dotted."""
  profiles = check["profiles"]
  gs = sorted({p["granularity"] for p in profiles})
  cs = sorted({p["budget"] for p in profiles})
  fig, axes = plt.subplots(len(gs), len(cs), figsize=(3.6 * len(cs),
                                                       2.9 * len(gs)),
                           sharex=True, squeeze=False)
  others = [s for s in check["settings"] if s != check["reference"]]
  colors = dict(zip(others, _colors(len(others))))
  for ax in axes.flat:
    ax.set_visible(False)
  for p in profiles:
    ax = axes[gs.index(p["granularity"])][cs.index(p["budget"])]
    ax.set_visible(True)
    for setting in check["settings"]:
      own = setting == check["reference"]
      points = [(s["params"], s["losses"][setting]) for s in p["sizes"]
                if setting in s["losses"]]  # not every setting, every size
      ax.plot(*zip(*points) if points else ([], []), "o-",
              color="k" if own else colors[setting], lw=1.6 if own else 1,
              ms=3, label=setting + (" (sweep)" if own else ""))
    for key, color in (("reference_minimum", "k"), ("best_minimum", "r")):
      m = p[key]
      if m["bracketed"]:
        ax.plot(m["params"], m["loss"], "*", color=color, ms=11, mec="k",
                mew=0.5)
    if p["law_params"]:
      ax.axvline(p["law_params"], color="0.5", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_title(f"G = {p['granularity']}, C = {p['budget']:.3g}",
                 fontsize=9)
  for ax in axes[-1]:
    ax.set_xlabel("N (non-embedding parameters)")
  for row in axes:
    row[0].set_ylabel("family loss (nats/token)")
  handles, labels = next(ax for ax in axes.flat
                         if ax.get_visible()).get_legend_handles_labels()
  handles += [plt.Line2D([], [], marker="*", color=c, ls="", ms=9, mec="k",
                         mew=0.5) for c in ("k", "r")]
  labels += [f"minimum, {check['reference']}", "minimum, each size's best"]
  if any(p["law_params"] for p in profiles):
    handles.append(plt.Line2D([], [], color="0.5", ls=":"))
    labels.append("law's N*")
  ncol = min(len(labels), 4)
  fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=ncol,
             bbox_to_anchor=(0.5, 0))
  rows = -(-len(labels) // ncol)  # the legend's height is in inches
  bottom = (0.12 + 0.16 * rows) / fig.get_figheight()
  return _save(fig, path, rect=(0, bottom, 1, 1))


def granularity_cost(curves: dict, path):
  """The cost of granularity against compute (`laws.report.granularity_cost`:
  mean family / dense loss at equal budget and depth), one panel per G, one
  line per labelled curve {label: {G: {budget: ratio}}}."""
  gs = sorted({int(g) for curve in curves.values() for g in curve})
  fig, axes = plt.subplots(1, len(gs), figsize=(3.4 * len(gs), 3.3),
                           squeeze=False)
  colors = _colors(len(curves))
  for ax, g in zip(axes[0], gs):
    for (label, curve), color in zip(curves.items(), colors):
      by_c = curve.get(g, {})
      cs = sorted(by_c)
      ax.plot(cs, [by_c[c] for c in cs], "o-", color=color, ms=4,
              label=label)
    ax.set_xscale("log")
    ax.set_title(f"G = {g}", fontsize=9)
    ax.set_xlabel("C (training FLOPs)")
  axes[0][0].set_ylabel("family / dense loss, equal C and depth")
  axes[0][-1].legend(fontsize=7)
  return _save(fig, path)


def training_curves(record: dict, path):
  """One training run's loss against step: each exit's training loss
  (`train_history`, the logged steps), its validation loss during training
  (`eval_history`, markers) and at the end (`exit_losses`, a marker at the
  last step). None for a record without a logged history."""
  history = record.get("train_history") or []
  if not history:
    return None
  steps = [h["step"] for h in history]
  train = np.array([h["exit_losses"] for h in history])  # [logged, G]
  colors = _colors(train.shape[1])
  fig, ax = plt.subplots(figsize=(5.2, 3.6))
  for g, color in enumerate(colors):
    ax.plot(steps, train[:, g], "-", color=color, lw=1,
            label=f"exit {g + 1}, train")
    evals = [(h["step"], h["exit_losses"][g])
             for h in record.get("eval_history") or []]
    evals.append((record["steps"], record["exit_losses"][g]))
    ax.plot(*zip(*evals), "o", color=color, mfc="none",
            label=f"exit {g + 1}, validation")
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats/token)")
  ax.set_title(f"G = {record['G']}, N = {record['N']:,}, "
               f"D = {record['D']:,}", fontsize=9)
  ax.legend(fontsize=6, ncol=2)
  return _save(fig, path)


def write_report(table, report, directory) -> dict[str, str]:
  """`draw_all` into directory/figures and report.md (`laws.report.markdown`)
  into directory, as a sweep's workdir has them; returns the figures."""
  figures = draw_all(table, report, os.path.join(directory, "figures"))
  atomic_write(os.path.join(directory, "report.md"),
               report_lib.markdown(report, figures, directory))
  return figures


def draw_all(table, report, directory) -> dict[str, str]:
  """Every figure that the table and report allow into `directory`.

  Always the fitted laws (a unified form fitted) and the IsoFLOP curves;
  the cost of granularity with G > 1 rows; the branch law with per-exit rows
  and its fit; the compute-optimal allocation and Efficiency Leverage with
  `laws.report.analyse_sweep`'s analysis (it needs the sweep's ladder).

  Returns:
    {title: path} of the figures drawn.
  """
  os.makedirs(directory, exist_ok=True)
  # The law drawn through the IsoFLOP curves: a law of N, D and G.
  form = report.get("selected_form") or next(
      (f for f in report["fits"] if f in forms_lib.UNIFIED_FORMS), None)
  p = lambda name: os.path.join(directory, name)
  figures = {
      "IsoFLOP curves": isoflop_curves(table, report, form, p("isoflop.png")),
      "Fitted laws": law_fit(table, report, form, p("law_fit.png")),
      "Granularity penalty": granularity_penalty(table, report,
                                                 p("granularity.png")),
      "Compute-optimal allocation": compute_optimal(table, report,
                                                    p("compute_optimal.png")),
      "Branch law": branch_law(table, report, p("branch_law.png")),
      "Efficiency Leverage": efficiency_leverage(report, p("leverage.png")),
  }
  return {k: v for k, v in figures.items() if v}
