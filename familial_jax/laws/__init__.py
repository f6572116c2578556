"""Scaling laws L(N, D, G): forms, Huber fits, uncertainty and analysis.

`laws.fit(table, form)` is the fitting function (module `laws.fitting`).
"""

from familial_jax.laws import analysis, fitting, forms, report, table
from familial_jax.laws.analysis import (Bootstrap, bootstrap, compute_optimal,
                                        efficiency_leverage, isoflop_minima,
                                        leave_one_budget_out, select_form)
from familial_jax.laws.fitting import FitResult, besiroglu_grid, fit, minimise
from familial_jax.laws.forms import FORMS, UNIFIED_FORMS, Form, get_form
from familial_jax.laws.table import as_table, family_table, load_csv
