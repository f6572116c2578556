"""Uncertainty, model selection and what a fitted law implies.

- `bootstrap`: confidence intervals by refitting on resampled data.
- `leave_one_budget_out`: held-out error of each form, to choose between them.
- `compute_optimal`: N*(C, G), D*(C, G) along a shape ladder, with the exact
  FLOPs per token (every exit head and the attention scores; not 6ND).
- `efficiency_leverage`: is one familial run better than G dense runs?
- `isoflop_minima`: the loss-minimising N of every IsoFLOP profile, read from
  the data alone (no law), to check the law's N* against.

Conventions:
- The unified law predicts the *family loss*, the mean of the G exit losses;
  at G = 1 it is the loss of a dense model.
- Efficiency Leverage, loss ratio: a family (N, D, G) trains with C = D *
  flops_per_token(N, G) FLOPs. The alternative trains G independent dense
  models of sizes N_1..N_G (the family's sub-model sizes) with the same total
  C, every model on the same number of tokens D' (as every exit of the family
  sees the same tokens): D' = C / sum_g flops_per_token(N_g, 1).
      EL_loss = mean_g L(N_g, D', 1) / L_family,
  with L_family the law's L(N, D, G) or an observed family loss. EL_loss > 1
  means the one familial run beats the G separate runs.
- Efficiency Leverage, compute ratio: the FLOPs C_dense with which a
  compute-optimal dense model (G = 1, along the same ladder) reaches
  L_family, over the family's FLOPs C:  EL_compute = C_dense / C.
"""

from __future__ import annotations

import collections.abc
import dataclasses

import jax
import numpy as np

from familial_jax import flops
from familial_jax.laws import fitting as fit_lib
from familial_jax.laws import forms as forms_lib
from familial_jax.laws import table as table_lib


@dataclasses.dataclass(frozen=True)
class Bootstrap:
  """Bootstrap distribution of a fit's parameters.

  Attributes:
    form: the fitted form.
    samples: parameter name -> [n_boot] values (finite replicates only).
    intervals: parameter name -> (low, high) percentile interval.
    level: coverage of the intervals (0.95 by default).
    resample: "point" or "budget".
    n_boot: replicates requested; n_ok: replicates with a finite optimum.
    n_converged: replicates that converged (`fit_lib.CONVERGED_GRAD_NORM`,
      the main fit's criterion). Where many did not converge (they stop at `maxiter`
      along a flat direction, e.g. an unidentified E), the intervals say
      where L-BFGS stopped more than where the optima are, and can move with
      the CPU's float rounding.
  """

  form: str
  samples: dict[str, np.ndarray]
  intervals: dict[str, tuple[float, float]]
  level: float
  resample: str
  n_boot: int
  n_ok: int
  n_converged: int

  def to_json(self) -> dict:
    return {"intervals": {k: list(v) for k, v in self.intervals.items()},
            "level": self.level, "resample": self.resample,
            "n_boot": self.n_boot, "n_ok": self.n_ok,
            "n_converged": self.n_converged}


# Held-out errors closer than this (relative) are a tie (`leave_one_budget_out`):
# a 1% difference in a leave-one-budget-out error over a handful of budgets is
# no evidence for either form.
TIE_RTOL = 1e-2


def bootstrap(table, result: fit_lib.FitResult, n_boot: int = 200, *,
              resample: str = "point", level: float = 0.95, seed: int = 0,
              backend: str = "optax", maxiter: int = 1000,
              tol: float = 1e-8) -> Bootstrap:
  """Percentile bootstrap intervals for a fit's parameters.

  Each replicate reweights the points with multinomial counts (resampling
  points with replacement, or whole IsoFLOP budgets with `resample="budget"`)
  and reruns L-BFGS from the full-data optimum; all replicates run as one
  batched (vmapped) solve, so nothing recompiles. The default backend here is
  optax: a vmapped jaxopt while-loop pays its large per-iteration overhead
  for the slowest replicate (measured on a 36-point sweep table, 100
  replicates, 2-core CPU: jaxopt 54 s, optax 4.0 s, identical intervals).

  Args:
    table: the table that `result` was fitted on.
    result: the full-data fit.
    n_boot: number of replicates.
    resample: "point" or "budget".
    level: coverage of the intervals.
    seed: seed of the resampling.
    backend: L-BFGS backend ("optax" or "jaxopt").
    maxiter: iteration cap per replicate.
    tol: gradient-norm tolerance per replicate.

  Returns:
    A `Bootstrap`.
  """
  if resample not in ("point", "budget"):
    raise ValueError(f"resample must be 'point' or 'budget', got {resample!r}.")
  if not (isinstance(n_boot, int) and n_boot >= 2):
    raise ValueError(f"n_boot must be an integer >= 2, got {n_boot!r}.")
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level!r}.")
  form, x, y = fit_lib.prepare(table, result.form)
  rng = np.random.default_rng(seed)
  n = len(y)
  if resample == "point":
    weights = rng.multinomial(n, np.full(n, 1 / n), size=n_boot)
  else:
    groups = _budgets(table, form)
    uniq, idx = np.unique(groups, return_inverse=True)
    if len(uniq) < 2:
      raise ValueError("resample='budget' needs at least 2 budgets; the table "
                       f"has {len(uniq)}. Resample points instead.")
    counts = rng.multinomial(len(uniq), np.full(len(uniq), 1 / len(uniq)),
                             size=n_boot)
    weights = counts[:, idx.reshape(-1)]
  # Replicates start at the optimum, with a looser tolerance than the main
  # fit (intervals need no 1e-10 gradients). The batch runs until its slowest
  # replicate stops: an unidentified E walks slowly along its flat direction,
  # and at a 200-iteration cap only 10 of tiny_cpu's 100 reducible replicates
  # converged (all 100 at 1000: the intervals of unconverged stops are where
  # L-BFGS stopped, not where the optima are).
  solve = fit_lib.solver(form.name, result.huber_delta, backend, maxiter, tol)
  batched = jax.vmap(solve, in_axes=(None, None, None, 0))
  with forms_lib.on_host_float64():
    xp, yp, wp = fit_lib.pad_points(x, y, weights.astype(np.float64))
    thetas, values, grads = batched(np.asarray(result.raw), xp, yp, wp)
    thetas, values = np.asarray(thetas), np.asarray(values)
  ok = np.isfinite(values) & form.finite(thetas)
  converged = ok & (np.asarray(grads) <= fit_lib.CONVERGED_GRAD_NORM)
  natural = [form.to_natural(t) for t in thetas[ok]]
  samples = {k: np.array([p[k] for p in natural]) for k in form.param_names}
  tail = 100 * (1 - level) / 2
  intervals = {k: (float(np.percentile(v, tail)),
                   float(np.percentile(v, 100 - tail)))
               for k, v in samples.items()}
  return Bootstrap(form.name, samples, intervals, level, resample, n_boot,
                   int(ok.sum()), int(converged.sum()))


def _budgets(table, form) -> np.ndarray:
  table = table_lib.as_table(table)
  if form.name != "branch":
    table = table_lib.family_table(table)
  return table_lib.budgets_of(table)


def leave_one_budget_out(table, forms=forms_lib.UNIFIED_FORMS,
                         huber_delta: float = 1e-3,
                         backend: str = "jaxopt",
                         tie_rtol: float = TIE_RTOL) -> dict:
  """Held-out error of each form, leaving one compute budget out at a time.

  For every budget, each form is fitted (full grid search) on the other
  budgets and predicts the held-out points. The error is the RMSE of the
  held-out log-loss residuals, pooled over all budgets.

  Forms whose errors lie within `tie_rtol` (relative) of the lowest are tied:
  such differences are float rounding, not evidence (when the fitted E goes to
  0 the multiplicative and reducible forms are the same law, and where their
  fits stop along that flat direction changes the 4th digit of the error from
  one CPU to another). Of tied forms the one with the fewest parameters wins,
  then the earliest in `forms_lib.UNIFIED_FORMS` (chinchilla, multiplicative,
  reducible: the paper's form before the alternative).

  Args:
    table: loss table with a `budget` column (else budgets are 6ND rounded to
      0.05 decades).
    forms: form names to compare (or one name).
    huber_delta: Huber delta of the fits.
    backend: L-BFGS backend.
    tie_rtol: relative difference of held-out errors below which forms tie.

  A form that no starting point fits with some budget left out (with few
  budgets the rest may not identify it) cannot be checked held out: its
  entry says which budgets ("no_fit_without"), its error is None, and it is
  not selected.

  Returns:
    {"forms": {name: {"rmse_log": float or None, "per_budget": {C: rmse}
     (and "no_fit_without": [C], where rmse_log is None)}},
     "best": the selected form, "tied": the forms tied with the lowest error
     (the best among them; just the best when nothing ties)}.

  Raises:
    ValueError: fewer than 2 budgets, or no form fitted without each budget.
  """
  out = {}
  for name in forms_lib.form_names(forms):
    form, x, y = fit_lib.prepare(table, name)
    budgets = _budgets(table, form)
    uniq = np.unique(budgets)
    if len(uniq) < 2:
      raise ValueError(
          "leave-one-budget-out needs at least 2 budgets; the table has "
          f"{len(uniq)}.")
    masks = np.stack([(budgets != b).astype(np.float64) for b in uniq])
    thetas, values, _ = fit_lib.minimise(
        form, x, y, masks, fit_lib.besiroglu_grid(form),
        huber_delta=huber_delta, backend=backend)
    failed = [float(b) for b, v in zip(uniq, values) if not np.isfinite(v)]
    if failed:  # a fold it cannot fit: the form cannot be checked held out
      out[name] = {"rmse_log": None, "per_budget": {},
                   "no_fit_without": failed}
      continue
    sq, per_budget = [], {}
    for b, theta in zip(uniq, thetas):
      held = budgets == b
      r = fit_lib.predict_log(form, theta, x[held]) - y[held]
      sq.append(r ** 2)
      per_budget[float(b)] = float(np.sqrt(np.mean(r ** 2)))
    out[name] = {"rmse_log": float(np.sqrt(np.mean(np.concatenate(sq)))),
                 "per_budget": per_budget}
  errors = {k: v["rmse_log"] for k, v in out.items()
            if v["rmse_log"] is not None}
  if not errors:
    raise ValueError(
        "leave-one-budget-out: no form has a finite fit with each budget "
        "left out (" + "; ".join(
            f"{k} without {', '.join(f'{b:g}' for b in v['no_fit_without'])}"
            for k, v in out.items()) + "); more budgets would identify them.")
  tied = select_form(errors, tie_rtol)
  return {"forms": out, "best": tied[0], "tied": tied}


def select_form(errors: dict[str, float],
                tie_rtol: float = TIE_RTOL) -> list[str]:
  """The forms whose held-out errors tie with the lowest, best first.

  Tied: within `tie_rtol` (relative) of the lowest error. Order: fewest
  parameters, then `forms_lib.UNIFIED_FORMS` order. The first is the
  selected form (see `leave_one_budget_out`).
  """
  if not isinstance(errors, collections.abc.Mapping) or not errors:
    raise ValueError("select_form takes {form name: held-out error}, e.g. "
                     "leave_one_budget_out(table)['forms'] as {name: "
                     "entry['rmse_log']}; got " + type(errors).__name__ + ".")
  for name, error in errors.items():
    forms_lib.get_form(name)
    if not (isinstance(error, (int, float, np.number)) and error >= 0
            and np.isfinite(error)):
      raise ValueError(f"the held-out error of {name!r} must be a finite "
                       f"number >= 0, got {error!r}.")
  lowest = min(errors.values())
  order = list(forms_lib.UNIFIED_FORMS)
  tied = [k for k in errors if errors[k] <= lowest * (1 + tie_rtol)]
  return sorted(tied, key=lambda k: (forms_lib.get_form(k).n_params,
                                     order.index(k) if k in order
                                     else len(order)))


def _law(result):
  form = forms_lib.get_form(result.form)
  if form.name == "branch":
    raise ValueError("use a unified law (not 'branch') for this analysis.")
  return lambda n, d, g: form.predict(result.params, n, d, g)


def compute_optimal(result: fit_lib.FitResult, budgets, granularity, ladder,
                    n_range=(1e3, 1e13), n_grid: int = 4001) -> dict:
  """Compute-optimal allocation N*(C, G), D*(C, G) along a shape ladder.

  For each budget C, scans N log-uniformly over `n_range` with
  D = C / ladder.train_flops_per_token(N, G) (exact FLOPs, exits included),
  then refines the minimum of the predicted loss by a parabola in log N.

  Args:
    result: a unified-law fit.
    budgets: training FLOPs C (scalar or array).
    granularity: G.
    ladder: a `familial_jax.flops.ShapeLadder` (anything with
      `train_flops_per_token(n_params, granularity)`).
    n_range: (min, max) N searched.
    n_grid: number of grid points.

  Returns:
    {"budget", "params" (N*), "tokens" (D*), "loss", "at_edge"}: arrays over
    budgets. "at_edge" is True where the predicted loss was lowest at an end
    of `n_range`: the optimum lies at or beyond that end, and N* is the end,
    not the optimum.

  Raises:
    ValueError: a budget that is not finite and > 0, G not a whole number
      >= 1, or a bad n_range or n_grid.
  """
  law = _law(result)
  budgets = np.atleast_1d(flops.positive("budgets", budgets))
  flops.check_granularity(granularity)
  bounds = flops.positive("n_range", n_range).reshape(-1)
  if bounds.shape != (2,) or not bounds[0] < bounds[1]:
    raise ValueError(f"n_range must be (min, max) with 0 < min < max, got "
                     f"{n_range!r}.")
  if not isinstance(n_grid, (int, np.integer)) or n_grid < 3:
    raise ValueError(f"n_grid must be an integer >= 3, got {n_grid!r}.")
  log_n = np.linspace(np.log(bounds[0]), np.log(bounds[1]), n_grid)
  n = np.exp(log_n)
  fpt = ladder.train_flops_per_token(n, granularity)
  loss = law(n[None], budgets[:, None] / fpt[None], granularity)  # [C, N]
  lowest = np.argmin(loss, 1)
  at_edge = (lowest == 0) | (lowest == n_grid - 1)
  i = np.clip(lowest, 1, n_grid - 2)
  rows = np.arange(len(budgets))
  l0, l1, l2 = loss[rows, i - 1], loss[rows, i], loss[rows, i + 1]
  denom = l0 - 2 * l1 + l2
  step = np.where(denom > 0, 0.5 * (l0 - l2) / np.where(denom > 0, denom, 1),
                  0.0)
  best_log_n = log_n[i] + np.clip(step, -1, 1) * (log_n[1] - log_n[0])
  n_star = np.where(at_edge, n[lowest], np.exp(best_log_n))
  d_star = budgets / ladder.train_flops_per_token(n_star, granularity)
  return {"budget": budgets, "params": n_star, "tokens": d_star,
          "loss": law(n_star, d_star, granularity), "at_edge": at_edge}


def efficiency_leverage(result: fit_lib.FitResult, n_params, exit_params,
                        tokens, granularity: int, ladder,
                        family_loss=None, compute_ratio: bool = True) -> dict:
  """Efficiency Leverage of a family against G independent dense models.

  See the module docstring for the conventions.

  Args:
    result: a unified-law fit (its G = 1 prediction is a dense model's loss).
    n_params: N of the family.
    exit_params: [G] sub-model sizes N_g.
    tokens: D, the family's training tokens.
    granularity: G.
    ladder: `ShapeLadder` giving the FLOPs per token of any size.
    family_loss: observed mean exit loss; default: the law's L(N, D, G).
    compute_ratio: also find the dense FLOPs to match (a bisection over
      compute-optimal scans, most of the cost); False leaves it NaN.

  Returns:
    {"loss_ratio", "compute_ratio", "family_loss", "dense_losses",
     "dense_tokens", "family_flops", "dense_flops_to_match"}.
  """
  law = _law(result)
  flops.check_granularity(granularity)
  flops.positive("n_params", n_params)
  flops.positive("tokens", tokens)
  exit_params = flops.positive("exit_params", exit_params).reshape(-1)
  if len(exit_params) != granularity:
    raise ValueError(f"exit_params has {len(exit_params)} entries for "
                     f"G={granularity}.")
  c = tokens * float(np.squeeze(ladder.train_flops_per_token(n_params,
                                                           granularity)))
  if family_loss is None:
    family_loss = float(np.squeeze(law(n_params, tokens, granularity)))
  dense_fpt = ladder.train_flops_per_token(exit_params, 1)
  d_dense = c / np.sum(dense_fpt)
  dense = law(exit_params, d_dense, 1)
  c_match = (_compute_to_reach(result, family_loss, ladder, c)
             if compute_ratio else float("nan"))
  return {"loss_ratio": float(np.mean(dense) / family_loss),
          "compute_ratio": c_match / c, "family_loss": family_loss,
          "dense_losses": dense.tolist(), "dense_tokens": float(d_dense),
          "family_flops": c, "dense_flops_to_match": c_match}


def _compute_to_reach(result, target, ladder, c_ref) -> float:
  """Smallest C at which the compute-optimal dense model reaches `target`."""
  if target <= result.params["E"]:
    return float("inf")
  lo, hi = np.log(c_ref) - 30, np.log(c_ref) + 30
  best = lambda log_c: compute_optimal(result, np.exp(log_c), 1, ladder,
                                       n_grid=1001)["loss"].item()
  if best(hi) > target:
    return float("inf")
  for _ in range(40):  # brackets C within a factor exp(60 / 2^40)
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if best(mid) > target else (lo, mid)
  return float(np.exp(hi))


def isoflop_minima(table, half_width: int = 2) -> list[dict]:
  """The loss-minimising model size of every IsoFLOP profile, from the data.

  Hoffmann et al. (2022)'s approach 2, which needs no law: for every (budget,
  G), the family losses against log N; a least-squares parabola through the
  lowest observed loss and up to `half_width` sizes on each side of it has its
  vertex at N_min. A profile is *bracketed* when its lowest loss has a larger
  loss at a smaller and at a larger N (the minimum lies between sampled
  sizes) and the parabola is convex with its vertex inside the fitted sizes;
  otherwise the minimum lies outside the sampled sizes (or the profile has
  fewer than 3), and N_min is None.

  Args:
    table: a loss table with a `budget` column (without one, budgets are 6ND
      on a grid). A model's rows (its exits, and its repeats: rows with the
      same params, tokens, G and budget, such as seeds) are averaged into one
      size of its profile (`table.model_table`).
    half_width: neighbours on each side of the lowest point in the parabola.

  Returns:
    One row per profile, by G then budget: {"budget", "granularity",
    "points" (its sizes), "bracketed", "params" (N_min) and "loss" (the
    parabola there; both None unless bracketed), "lowest_params",
    "lowest_tokens", "lowest_loss" (the lowest observed point), "edge"
    ("smallest" or "largest" when the lowest loss is at that end, else
    None)}.
  """
  if not isinstance(half_width, int) or half_width < 1:
    raise ValueError(f"half_width must be an integer >= 1, got {half_width!r}.")
  fam = table_lib.model_table(table_lib.as_table(table))
  table_lib.check_positive_finite(fam, ("params", "loss"))
  budget = table_lib.budgets_of(fam)
  rows = []
  for g in np.unique(fam["granularity"]):
    for c in np.unique(budget[fam["granularity"] == g]):
      m = (fam["granularity"] == g) & (budget == c)
      order = np.argsort(fam["params"][m])
      n = fam["params"][m][order]
      x = np.log(n)
      y = fam["loss"][m][order]
      tokens = fam["tokens"][m][order]
      i = int(np.argmin(y))
      row = {"budget": float(c), "granularity": int(g), "points": len(y),
             "bracketed": False, "params": None, "loss": None,
             "lowest_params": float(n[i]),
             "lowest_loss": float(y[i]), "lowest_tokens": float(tokens[i]),
             "edge": ("smallest" if i == 0 else
                      "largest" if i == len(y) - 1 else None)}
      rows.append(row)
      if row["edge"]:
        continue
      lo, hi = max(0, i - half_width), min(len(y), i + half_width + 1)
      a, b, c0 = np.polyfit(x[lo:hi], y[lo:hi], 2)
      vertex = -b / (2 * a) if a > 0 else np.nan
      if a > 0 and x[lo] < vertex < x[hi - 1]:
        row.update(bracketed=True, params=float(np.exp(vertex)),
                   loss=float(c0 - b * b / (4 * a)))
  return rows
