"""Scaling laws L(N, D, G): forms, Huber fits, uncertainty and analysis.

Note: `familial_jax.laws.fit` is the fitting *function* here; inside the
package the module is imported before this file rebinds the name.
"""

from familial_jax.laws import analysis, forms, table
from familial_jax.laws.analysis import (Bootstrap, bootstrap, compute_optimal,
                                        efficiency_leverage,
                                        leave_one_budget_out)
from familial_jax.laws.fit import FitResult, besiroglu_grid, fit, minimise
from familial_jax.laws.forms import FORMS, UNIFIED_FORMS, Form, get_form
from familial_jax.laws.table import as_table, family_table, load_csv
