"""Huber fits of scaling laws with jaxopt L-BFGS in float64.

Objective (Chinchilla approach 3; Besiroglu et al. 2024):

    sum_i w_i * Huber_delta(log L_hat(theta; N_i, D_i, G_i) - log L_i)

with Huber_delta(r) = r^2 / 2 for |r| <= delta, else delta * (|r| - delta / 2)
(scipy.special.huber), delta = 1e-3 by default and w_i = 1 (bootstrap
replicates reweight points instead of copying them, so every replicate has the
same shapes and nothing recompiles).

Search: a grid of starts (the Besiroglu et al. grid: e in {-1, -.5, ..., 1},
a, b in {0, 5, ..., 25}, alpha, beta in {0, .5, ..., 2}; times gamma in
{-0.1, 0, 0.1} for forms with gamma). Running thousands of full L-BFGS solves
in one vmapped while-loop waits for the slowest start, and per-iteration
overhead dominates such tiny problems, so the fit
  (1) screens: evaluates the objective at every start in one vectorised call;
  (2) refines: runs L-BFGS to convergence from the `refine_top` best distinct
      starts, one compiled solve reused for each (no waiting on stragglers),
      side by side on a small thread pool (XLA:CPU runs each on one core and
      releases the GIL);
  (3) returns the best finite optimum (finite natural parameters too: a
      log-scale constant past ~709 would give A = inf).
A cold fit is mostly compilation, so the solve compiles on the pool while the
screen runs, and jaxopt's eight objective call sites share one traced
value_and_grad (with hand-written JVPs for the log-sum-exp and the Huber loss,
a smaller program): 1.5 -> 1.25 s on the Chinchilla data, 2 cores.
On the Chinchilla data this reaches the published grid optimum (the best of
all 4,500 full solves); `benchmarks/fit_speed.py` measures it against scipy.

Backends: "jaxopt" (default; `jaxopt.LBFGS` with a zoom line search) and
"optax" (`optax.lbfgs` in a `lax.while_loop`; same optimum, less overhead per
iteration on CPU). Points are padded to a multiple of 64 with zero weight, so
tables of similar size, bootstrap replicates and leave-one-out masks reuse the
compiled solver.

All JAX work runs inside `forms.on_host_float64()`: float64 on the host CPU
whatever the default device (a GPU node or TPU host runs the CPU programs);
the caller's x64 and default-device settings are left untouched and results
come back as numpy float64.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import itertools
import os
import threading

import jax
import jax.numpy as jnp
import jaxopt
import numpy as np
import optax

from familial_jax import flops
from familial_jax.laws import forms as forms_lib
from familial_jax.laws import table as table_lib

DEFAULT_GAMMA_GRID = (-0.1, 0.0, 0.1)
# A solve has converged when its final gradient norm is at most this
# (`FitResult.converged`, `analysis.Bootstrap.n_converged`).
CONVERGED_GRAD_NORM = 1e-6


def besiroglu_grid(form: forms_lib.Form,
                   gamma_grid=DEFAULT_GAMMA_GRID) -> np.ndarray:
  """Grid of raw starting points: 4,500 starts (x len(gamma_grid) with gamma).

  Returns:
    [n_starts, n_params] float64 array in the form's raw parameter order.
  """
  axes = [np.arange(-1, 1.01, 0.5), np.arange(0, 26, 5.0),
          np.arange(0, 26, 5.0), np.arange(0, 2.01, 0.5),
          np.arange(0, 2.01, 0.5)]
  if "gamma" in form.raw_names:
    axes.append(np.asarray(gamma_grid, np.float64))
  return np.array(list(itertools.product(*axes)), np.float64)


@dataclasses.dataclass(frozen=True)
class FitResult:
  """The best optimum of a fit.

  Attributes:
    form: name of the fitted form.
    params: natural-unit parameters by name (E, A, B, alpha, beta[, gamma]).
    raw: the raw log-space optimum (e, a, b, alpha, beta[, gamma]).
    objective: sum of Huber losses at the optimum.
    converged: whether L-BFGS met its gradient tolerance.
    grad_norm: gradient norm at the optimum.
    residuals: log L_hat - log L per point.
    predictions: L_hat per point.
    huber_delta: the Huber delta used.
    n_points: number of points fitted.
    n_starts: number of starting points screened.
  """

  form: str
  params: dict[str, float]
  raw: np.ndarray
  objective: float
  converged: bool
  grad_norm: float
  residuals: np.ndarray
  predictions: np.ndarray
  huber_delta: float
  n_points: int
  n_starts: int

  def predict(self, params, tokens, granularity=1.0) -> np.ndarray:
    """Predicted loss at (N, D, G) (for "branch": (N_g, D, g)).

    Raises:
      ValueError: N or D not finite and > 0, or G (g) not finite and >= 1.
    """
    g = flops.positive("granularity", granularity)
    if np.any(g < 1):
      raise ValueError(f"granularity must be >= 1, got {granularity!r}.")
    return forms_lib.get_form(self.form).predict(
        self.params, flops.positive("params", params),
        flops.positive("tokens", tokens), g)

  def to_json(self) -> dict:
    return {"form": self.form, "params": self.params,
            "objective": self.objective, "converged": self.converged,
            "grad_norm": self.grad_norm, "huber_delta": self.huber_delta,
            "n_points": self.n_points, "n_starts": self.n_starts,
            "rmse_log": float(np.sqrt(np.mean(self.residuals ** 2)))}


def prepare(table, form) -> tuple[forms_lib.Form, np.ndarray, np.ndarray]:
  """Validates a table for a form and returns (form, x = log inputs, y = log L).

  Raises:
    ValueError: with the reason, for any input the fit cannot use.
  """
  form = forms_lib.get_form(form)
  table = table_lib.as_table(table)
  if form.name != "branch":
    table = table_lib.family_table(table)
  cols = list(form.columns)
  for c in cols:
    if c not in table:
      raise ValueError(
          f"form {form.name!r} needs column {c!r}, which the table lacks.")
  table_lib.check_positive_finite(table, cols + ["loss"])
  n = len(table["loss"])
  if n <= form.n_params:
    raise ValueError(
        f"form {form.name!r} has {form.n_params} parameters but the table has "
        f"only {n} point(s); fit at least {form.n_params + 1}.")
  if form.uses_granularity and len(np.unique(table[cols[2]])) < 2:
    raise ValueError(
        f"form {form.name!r} fits an exponent of {cols[2]!r}, but every point "
        f"has the same {cols[2]} = {table[cols[2]][0]:g}; use form "
        "'chinchilla' or add points with other values.")
  x = np.log(np.stack([table[c] for c in cols], 1))
  y = np.log(table["loss"])
  return form, x, y


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _huber(r, delta):
  a = jnp.abs(r)
  return jnp.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


@_huber.defjvp
def _huber_jvp(delta, primals, tangents):
  (r,), (dr,) = primals, tangents
  return _huber(r, delta), jnp.clip(r, -delta, delta) * dr


BACKENDS = ("jaxopt", "optax")
_PAD = 64


@functools.lru_cache(maxsize=None)
def _objective(form_name: str, delta: float):
  form = forms_lib.get_form(form_name)

  def objective(theta, x, y, w):
    return jnp.sum(w * _huber(form.log_loss(theta, x) - y, delta))

  return objective


@functools.lru_cache(maxsize=None)
def _evaluate(form_name: str, delta: float):
  return jax.jit(jax.vmap(_objective(form_name, delta), (0, None, None, None)),
                 compiler_options=forms_lib.FAST_COMPILE)


def _centre(x, w):
  """Shift of the log inputs: the mean log N and log D of the weighted points
  (log G, in [0, ~2], is left alone)."""
  used = (w > 0)[:, None]
  mean = jnp.sum(jnp.where(used, x, 0), 0) / jnp.maximum(jnp.sum(used), 1)
  return mean * jnp.array([1.0, 1.0, 0.0], x.dtype)


def _uncentre(theta, shift):
  """Raw parameters for inputs x from those for x - shift (exact, linear):
  a - alpha log N = (a - alpha c_N) - alpha (log N - c_N), likewise b, beta."""
  return theta.at[1].add(theta[3] * shift[0]).at[2].add(theta[4] * shift[1])


@functools.lru_cache(maxsize=None)
def solver(form_name: str, delta: float, backend: str, maxiter: int,
           tol: float):
  """A jitted `solve(theta0, x, y, w) -> (theta, value, grad_norm)`.

  L-BFGS runs on centred inputs (log N and log D minus their means over the
  points with weight), with a and b shifted to match: the same law and
  optimum, but a and alpha (b and beta) are no longer nearly collinear as
  log N ~ 15 makes them. Measured on the tiny_cpu sweep (reducible form):
  the Hessian's condition number over (a, b, alpha, beta, gamma) at the
  optimum is 7.9e5 uncentred, 5.7e3 centred; its bootstrap (100 replicates,
  optax, 2-core CPU) converges 100 of 100 at 1000 iterations in 4.0 s against
  18.5 s uncentred, to the same intervals. theta0, theta and grad_norm are in
  the raw (uncentred) parameters.
  """
  form = forms_lib.get_form(form_name)
  assert form.raw_names[:5] == ("e", "a", "b", "alpha", "beta"), form
  fun = _objective(form_name, delta)
  if backend == "jaxopt":
    # jaxopt evaluates the objective at 8 sites of its loop and zoom line
    # search; one jitted value_and_grad is traced once and reused by all.
    solver = jaxopt.LBFGS(fun=jax.jit(jax.value_and_grad(fun)),
                          value_and_grad=True, maxiter=maxiter, tol=tol,
                          history_size=10, linesearch="zoom",
                          implicit_diff=False)

    def minimise(theta0, x, y, w):
      return solver.run(theta0, x, y, w).params
  elif backend == "optax":
    opt = optax.lbfgs(memory_size=10)

    def minimise(theta0, x, y, w):
      f = lambda t: fun(t, x, y, w)
      value_and_grad = optax.value_and_grad_from_state(f)

      def cond(carry):
        _, state = carry
        count = optax.tree_utils.tree_get(state, "count")
        grad = optax.tree_utils.tree_get(state, "grad")
        return (count == 0) | ((count < maxiter) &
                               (optax.tree_utils.tree_norm(grad) > tol))

      def body(carry):
        theta, state = carry
        value, grad = value_and_grad(theta, state=state)
        updates, state = opt.update(grad, state, theta, value=value,
                                    grad=grad, value_fn=f)
        return optax.apply_updates(theta, updates), state

      return jax.lax.while_loop(cond, body, (theta0, opt.init(theta0)))[0]
  else:
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}.")

  @functools.partial(jax.jit, compiler_options=forms_lib.FAST_COMPILE)
  def solve(theta0, x, y, w):
    shift = _centre(x, w)
    theta = _uncentre(minimise(_uncentre(theta0, -shift), x - shift, y, w),
                      shift)
    value, grad = jax.value_and_grad(fun)(theta, x, y, w)
    return theta, value, jnp.linalg.norm(grad)

  return solve


_LOCK = threading.RLock()
_COMPILED: dict[tuple, concurrent.futures.Future] = {}
_POOLS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}


def _pool() -> concurrent.futures.ThreadPoolExecutor:
  # XLA:CPU runs these tiny programs on one core and releases the GIL, so
  # refines from different starts run side by side on a small pool (one per
  # process: a forked child does not inherit the parent's threads).
  with _LOCK:
    pid = os.getpid()
    if pid not in _POOLS:
      _POOLS[pid] = concurrent.futures.ThreadPoolExecutor(
          max_workers=max(2, min(4, os.cpu_count() or 1)),
          thread_name_prefix="familial_jax-fit")
    return _POOLS[pid]


def _compiled_solver(key: tuple, n_params: int, n_points: int):
  """A future of the compiled solve for `key` = solver()'s arguments.

  The first request compiles on the pool, so the caller screens its starts
  while XLA compiles (compilation is most of a cold fit).
  """

  def compile_():
    spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float64)
    with forms_lib.on_host_float64():
      return solver(*key).lower(spec(n_params), spec(n_points, 3),
                                spec(n_points), spec(n_points)).compile()

  with _LOCK:
    full_key = key + (n_params, n_points)
    if full_key not in _COMPILED:
      _COMPILED[full_key] = _pool().submit(compile_)
    return _COMPILED[full_key]


def _solve_from(solve, theta0, x, y, w):
  with forms_lib.on_host_float64():
    theta, value, grad = solve(theta0, x, y, w)
    return np.asarray(theta), float(value), float(grad)


def pad_points(x, y, w):
  """Pads points to a multiple of _PAD with zero-weight rows."""
  n = len(y)
  pad = -n % _PAD
  x = np.concatenate([x, np.zeros((pad, x.shape[1]))])
  y = np.concatenate([y, np.zeros(pad)])
  w = np.concatenate([np.atleast_2d(w), np.zeros((np.atleast_2d(w).shape[0],
                                                   pad))], 1)
  return x, y, w


def _distinct_best(thetas, values, k, min_dist=1e-3):
  """Indices of the k best finite starts that are pairwise distinct."""
  order = np.argsort(np.where(np.isfinite(values), values, np.inf))
  chosen = []
  for i in order:
    if not np.isfinite(values[i]):
      break
    if all(np.max(np.abs(thetas[i] - thetas[j])) > min_dist for j in chosen):
      chosen.append(i)
    if len(chosen) == k:
      break
  return np.asarray(chosen, int)


def minimise(form, x, y, weights, starts, *, huber_delta=1e-3,
             refine_top=16, backend="jaxopt", maxiter=1000, tol=1e-10):
  """Screens `starts` and refines the best ones, for each row of `weights`.

  Args:
    form: a `Form` or its name.
    x: [n, 3] log inputs. y: [n] log losses.
    weights: [m, n] non-negative point weights; one problem per row (the full
      data, a bootstrap replicate, or a 0/1 mask leaving points out).
    starts: [s, p] raw starting points, screened by objective value.
    refine_top: distinct best starts refined to convergence per problem.
    backend: "jaxopt" or "optax".

  Returns:
    (thetas [m, p], objectives [m], grad_norms [m]) of each problem's best
    finite optimum (NaN objective where none was finite).
  """
  form = forms_lib.get_form(form)
  delta = float(huber_delta)
  if backend not in BACKENDS:
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}.")
  xp, yp, wp = pad_points(np.asarray(x, np.float64), np.asarray(y, np.float64),
                          np.asarray(weights, np.float64))
  starts = np.asarray(starts, np.float64)
  compiled = _compiled_solver((form.name, delta, backend, int(maxiter),
                               float(tol)), starts.shape[1], len(yp))
  with forms_lib.on_host_float64():
    xj, yj = jnp.asarray(xp), jnp.asarray(yp)
    out_theta, out_value, out_grad = [], [], []
    for w in wp:
      wj = jnp.asarray(w)
      values = np.asarray(_evaluate(form.name, delta)(jnp.asarray(starts), xj,
                                                      yj, wj))
      chosen = _distinct_best(starts, values, refine_top)
      solve = functools.partial(_solve_from, compiled.result(), x=xj, y=yj,
                                w=wj)
      best = (np.inf, starts[0], np.nan)
      # In order of the screen, so ties resolve the same way on any pool.
      for theta, value, grad in _pool().map(solve, starts[chosen]):
        if np.isfinite(value) and form.finite(theta) and value < best[0]:
          best = (value, theta, grad)
      out_value.append(best[0] if np.isfinite(best[0]) else np.nan)
      out_theta.append(best[1])
      out_grad.append(best[2])
  return np.asarray(out_theta), np.asarray(out_value), np.asarray(out_grad)


def fit(table, form="multiplicative", huber_delta: float = 1e-3, *,
        starts: np.ndarray | None = None, refine_top: int = 16,
        backend: str = "jaxopt", maxiter: int = 1000,
        tol: float = 1e-10) -> FitResult:
  """Fits a scaling law to a loss table.

  Args:
    table: mapping of columns (see `familial_jax.laws.table`): params, tokens,
      loss, and granularity (for G forms), or exit_params and exit (branch).
      Per-exit rows (an `exit` column) are averaged into the family loss for
      the unified forms.
    form: "chinchilla", "multiplicative", "reducible" or "branch".
    huber_delta: delta of the Huber loss on log-loss residuals.
    starts: [s, n_params] raw starting points; default `besiroglu_grid(form)`.
    refine_top: number of distinct best starts run to convergence.
    backend: "jaxopt" (default) or "optax".
    maxiter: L-BFGS iteration cap.
    tol: gradient-norm tolerance.

  Returns:
    The best finite optimum as a `FitResult`.

  Raises:
    ValueError: bad input (missing columns, non-positive or non-finite values,
      fewer points than parameters, a G form on data with a single G, unknown
      form or backend), or no start reached a finite optimum.
  """
  form, x, y = prepare(table, form)
  if not huber_delta > 0 or not np.isfinite(huber_delta):
    raise ValueError(f"huber_delta must be finite and > 0, got {huber_delta!r}.")
  starts = besiroglu_grid(form) if starts is None else np.atleast_2d(
      np.asarray(starts, np.float64))
  if starts.shape[1] != form.n_params:
    raise ValueError(
        f"starts must have {form.n_params} columns {form.raw_names} for form "
        f"{form.name!r}, got shape {starts.shape}.")
  thetas, values, grads = minimise(
      form, x, y, np.ones((1, len(y))), starts, huber_delta=huber_delta,
      refine_top=refine_top, backend=backend, maxiter=maxiter, tol=tol)
  theta, value, grad_norm = thetas[0], values[0], grads[0]
  if not np.isfinite(value):
    raise ValueError(
        f"no starting point reached a finite optimum for form {form.name!r}; "
        "check that the losses follow a power law in N and D.")
  log_pred = predict_log(form, theta, x)
  return FitResult(
      form=form.name, params=form.to_natural(theta), raw=theta,
      objective=float(value), converged=bool(grad_norm <= CONVERGED_GRAD_NORM),
      grad_norm=float(grad_norm), residuals=log_pred - y,
      predictions=np.exp(log_pred), huber_delta=float(huber_delta),
      n_points=len(y), n_starts=len(starts))


def predict_log(form, theta, x) -> np.ndarray:
  """log L_hat for raw parameters `theta` and log inputs `x` (float64)."""
  form = forms_lib.get_form(form)
  with forms_lib.on_host_float64():
    return np.asarray(forms_lib.compiled(form.log_loss)(
        jnp.asarray(theta, jnp.float64), jnp.asarray(x, jnp.float64)))
