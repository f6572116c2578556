"""The README's Python examples run as printed, on real data."""

import os
import re

import jax
import numpy as np
import pytest

from familial_jax import laws

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_blocks():
  with open(os.path.join(REPO, "README.md")) as f:
    return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_readme_python_examples_run(tmp_path, monkeypatch):
  """'Using the model' with a batch of tokens, and 'Fitting scaling laws' on
  the committed tiny_cpu sweep (its N, D, G, C and family losses): the model
  gives G logits of [B, T, V] and the exit-1 sub-model the family's first
  exit; the fit converges inside its 200-replicate interval, the selection
  names a unified form (the best first among the tied), the allocation grows
  with compute, and every profile gets a minimum row; the report selects
  the form the held-out selection does, and the figures are drawn."""
  model_block, fit_block = _python_blocks()
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, 256)
  ns = {"tokens": tokens}
  exec(model_block, ns)  # pylint: disable=exec-used
  assert [l.shape for l in ns["logits"]] == [(2, 16, 256)] * 4
  sub_cfg, sub_params = ns["sub_cfg"], ns["sub_params"]
  assert sub_cfg.n_layers == 2 and sub_cfg.granularity == 1
  (sub_logits,) = ns["FamilialLM"](sub_cfg).apply({"params": sub_params},
                                                  tokens)
  np.testing.assert_allclose(sub_logits, ns["logits"][0], atol=1e-5)

  t = laws.table.load_csv(os.path.join(REPO, "experiments", "results",
                                       "tiny_cpu", "results.csv"))
  t = laws.table.family_table(t)
  ns = {"N": t["params"], "D": t["tokens"], "G": t["granularity"],
        "C": t["budget"], "L": t["loss"]}
  monkeypatch.chdir(tmp_path)  # the example writes figures/ where it runs
  exec(fit_block, ns)  # pylint: disable=exec-used
  result, boot, select = ns["result"], ns["boot"], ns["select"]
  assert result.form == "multiplicative" and result.converged
  lo, hi = boot.intervals["gamma"]
  assert lo <= result.params["gamma"] <= hi and boot.n_boot == 200
  assert select["best"] in laws.UNIFIED_FORMS
  assert select["best"] == select["tied"][0]
  opt = ns["opt"]
  assert opt["params"][1] > opt["params"][0] and opt["loss"][1] < opt["loss"][0]
  profiles = set(zip(t["budget"].tolist(), t["granularity"].tolist()))
  assert len(ns["minima"]) == len(profiles) == 9
  report = ns["report"]
  assert report["selected_form"] == select["best"]
  assert report["fits"]["multiplicative"]["params"]["gamma"] == pytest.approx(
      result.params["gamma"], rel=1e-6)
  # No plan.json, so no allocation or leverage figure; a family table, so no
  # branch law.
  assert sorted(ns["figures"]) == ["Fitted laws", "Granularity penalty",
                                   "IsoFLOP curves"]
  for path in ns["figures"].values():
    with open(tmp_path / path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
