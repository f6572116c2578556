"""Scaling-law forms in the log-sum-exp parameterisation (pure functions).

Every form predicts log L from three log inputs x = [log N, log D, log G]
(for the branch law: [log N_g, log D, log g]) and a raw parameter vector
theta in which the scale constants live in log space, as in Chinchilla's
approach 3 and Besiroglu et al. (2024):

    e = log E,  a = log A,  b = log B.

Forms (the names used everywhere, in the fitter, the binaries and the JSON):

- "chinchilla":      L = E + A/N^alpha + B/D^beta
    log L = LSE(e, a - alpha log N, b - beta log D)
- "multiplicative":  L = (E + A/N^alpha + B/D^beta) * G^gamma     (default)
    log L = LSE(e, a - alpha log N, b - beta log D) + gamma log G
- "reducible":       L = E + (A/N^alpha + B/D^beta) * G^gamma
    log L = LSE(e, a - alpha log N + gamma log G, b - beta log D + gamma log G)
- "branch":          L_g = (E + A/N_g^alpha + B/D^beta) * g^gamma
    the per-exit branch law: the loss of exit g (1-based) from its own
    sub-model size N_g, the tokens D and the number g of exits up to and
    including it; gamma > 0 means upstream exits cost the deeper ones.

Where the law programs run: every JAX computation of `familial_jax.laws`
runs inside `on_host_float64()`, in float64 on this host's CPU whatever the
process' default device (see there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Natural-unit names of the raw (log-space) parameters.
_NATURAL = {"e": "E", "a": "A", "b": "B", "alpha": "alpha", "beta": "beta",
            "gamma": "gamma"}
_LOG_SCALED = ("e", "a", "b")
# The law programs are tiny: compile time dominates, so skip the expensive
# LLVM passes (measured: 1.9 s -> 1.3 s compile on CPU for the jaxopt solve,
# same results; benchmarks/fit_speed.py).
FAST_COMPILE = {"xla_backend_optimization_level": 0,
                "xla_cpu_use_fusion_emitters": False,
                "xla_llvm_disable_expensive_passes": True}


@functools.lru_cache(maxsize=1)
def _host_cpu():
  try:
    return jax.local_devices(backend="cpu")[0]
  except RuntimeError:  # JAX_PLATFORMS leaves the CPU out: the default device
    return None


@contextlib.contextmanager
def on_host_float64():
  """Float64 on this host's CPU: where every law program runs.

  The sweep fits its laws in the process that finishes the last point, on a
  GPU node or a TPU host, and users refit the committed records on laptops.
  The programs are tiny (hundreds of points, six parameters), so an
  accelerator would only add launches and transfers; TPUs have no native
  float64; and float64 exp and log differ between XLA's backends in the last
  bits, which L-BFGS and the bootstrap percentiles can carry into printed
  digits. On the CPU a fit runs the same programs with or without an
  accelerator (what remains are differences between CPUs: see
  tests/test_laws.py's reproduction test). The caller's x64 and
  default-device settings are restored on exit (both are thread-local
  contexts, so each thread of the fit's pool enters its own).
  """
  with jax.enable_x64(True), jax.default_device(_host_cpu()):
    yield


def _shifted_exps(u, v, w):
  m = jnp.maximum(jnp.maximum(u, v), w)
  return m, (jnp.exp(u - m), jnp.exp(v - m), jnp.exp(w - m))


@jax.custom_jvp
def _lse3(u, v, w):
  m, exps = _shifted_exps(u, v, w)
  return m + jnp.log(sum(exps))


@_lse3.defjvp
def _lse3_jvp(primals, tangents):
  m, exps = _shifted_exps(*primals)
  s = sum(exps)
  return m + jnp.log(s), sum(e * t for e, t in zip(exps, tangents)) / s


def chinchilla_log_loss(theta, x):
  """theta = [e, a, b, alpha, beta]; x = [..., 3] log inputs (G ignored)."""
  e, a, b, alpha, beta = (theta[..., i, None] for i in range(5))
  return _lse3(e + 0 * x[..., 0], a - alpha * x[..., 0], b - beta * x[..., 1])


def multiplicative_log_loss(theta, x):
  """theta = [e, a, b, alpha, beta, gamma]."""
  return chinchilla_log_loss(theta[..., :5], x) + theta[..., 5, None] * x[..., 2]


def reducible_log_loss(theta, x):
  """theta = [e, a, b, alpha, beta, gamma]."""
  e, a, b, alpha, beta, gamma = (theta[..., i, None] for i in range(6))
  g = gamma * x[..., 2]
  return _lse3(e + 0 * x[..., 0], a - alpha * x[..., 0] + g,
               b - beta * x[..., 1] + g)


@dataclasses.dataclass(frozen=True)
class Form:
  """A law: its name, raw parameter names, input columns and log-loss function.

  Attributes:
    name: the form's name.
    raw_names: names of the raw (log-space) parameters, in theta's order.
    columns: table columns giving N, D and G (or N_g, D and g).
    log_loss: `log_loss(theta, x) -> log L` with x = log of those columns.
    uses_granularity: whether the third input matters.
  """

  name: str
  raw_names: tuple[str, ...]
  columns: tuple[str, str, str]
  log_loss: Callable
  uses_granularity: bool

  @property
  def param_names(self) -> tuple[str, ...]:
    """Natural-unit names: E, A, B, alpha, beta[, gamma]."""
    return tuple(_NATURAL[n] for n in self.raw_names)

  @property
  def n_params(self) -> int:
    return len(self.raw_names)

  def to_natural(self, theta) -> dict[str, float]:
    """Raw log-space vector -> {"E": ..., "A": ..., "alpha": ...}."""
    theta = np.asarray(theta, np.float64)
    return {_NATURAL[n]: float(np.exp(v) if n in _LOG_SCALED else v)
            for n, v in zip(self.raw_names, theta)}

  def finite(self, theta) -> np.ndarray:
    """Whether raw vectors [..., n_params] give finite natural parameters
    (a finite log-scale e, a or b can still overflow exp: A = inf)."""
    theta = np.asarray(theta, np.float64)
    logs = [i for i, n in enumerate(self.raw_names) if n in _LOG_SCALED]
    with np.errstate(over="ignore"):
      return (np.all(np.isfinite(theta), -1) &
              np.all(np.isfinite(np.exp(theta[..., logs])), -1))

  def from_natural(self, params: dict[str, float]) -> np.ndarray:
    """{"E": ..., ...} -> raw log-space vector."""
    missing = [p for p in self.param_names if p not in params]
    if missing:
      raise ValueError(f"form {self.name!r} needs parameters {missing}.")
    return np.array([np.log(params[_NATURAL[n]]) if n in _LOG_SCALED
                     else params[_NATURAL[n]] for n in self.raw_names],
                    np.float64)

  def predict(self, params: dict[str, float], n, d, g=1.0) -> np.ndarray:
    """Loss in natural units from natural parameters (numpy, float64)."""
    x = np.stack(np.broadcast_arrays(np.log(np.asarray(n, np.float64)),
                                     np.log(np.asarray(d, np.float64)),
                                     np.log(np.asarray(g, np.float64))), -1)
    with on_host_float64():
      return np.exp(np.asarray(compiled(self.log_loss)(
          jnp.asarray(self.from_natural(params)), jnp.asarray(x))))


_BASE = ("e", "a", "b", "alpha", "beta")
FORMS: dict[str, Form] = {
    "chinchilla": Form("chinchilla", _BASE, ("params", "tokens", "granularity"),
                       chinchilla_log_loss, False),
    "multiplicative": Form("multiplicative", _BASE + ("gamma",),
                           ("params", "tokens", "granularity"),
                           multiplicative_log_loss, True),
    "reducible": Form("reducible", _BASE + ("gamma",),
                      ("params", "tokens", "granularity"),
                      reducible_log_loss, True),
    "branch": Form("branch", _BASE + ("gamma",),
                   ("exit_params", "tokens", "exit"),
                   multiplicative_log_loss, True),
}
UNIFIED_FORMS = ("chinchilla", "multiplicative", "reducible")


@functools.lru_cache(maxsize=None)
def compiled(log_loss: Callable):
  """A form's jitted `log_loss`: one program per input shape instead of a
  dispatch per operation (the analysis predicts thousands of times)."""
  return jax.jit(log_loss, compiler_options=FAST_COMPILE)


def get_form(name: str | Form) -> Form:
  """Looks a form up by name, with a clear error for unknown names."""
  if isinstance(name, Form):
    return name
  if name not in FORMS:
    raise ValueError(
        f"unknown law form {name!r}; choose one of {sorted(FORMS)}.")
  return FORMS[name]


def form_names(forms) -> list[str]:
  """Form names from one name or a sequence of them, each checked
  (a string is one form, not a sequence of letters)."""
  forms = [forms] if isinstance(forms, (str, Form)) else list(forms)
  return [get_form(f).name for f in forms]
