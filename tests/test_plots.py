"""The end of a sweep: fits, every figure and report.md from real records."""

import glob
import json
import os
import shutil

import numpy as np
import pytest

from familial_jax import isoflop
from familial_jax import plots
from familial_jax import laws
from familial_jax import sweep as sweep_lib
from familial_jax.results import ResultsStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = os.path.join(REPO, "experiments", "results", "tiny_cpu")


def test_fit_and_draw_writes_every_figure_and_the_report(tmp_path):
  """fit_and_draw on the committed tiny_cpu records (36 trainings, 3 exits
  at most): fits.json, the six figures as real PNGs and report.md naming
  them, with the data's IsoFLOP minima next to the law's N*."""
  os.makedirs(tmp_path / "results")
  for f in glob.glob(os.path.join(COMMITTED, "records", "*.json")):
    shutil.copy(f, tmp_path / "results")
  with open(os.path.join(COMMITTED, "plan.json")) as f:
    sweep = isoflop.sweep_from_dict(json.load(f)["sweep"])
  lines = []
  report = sweep_lib.fit_and_draw(sweep, str(tmp_path), n_boot=2,
                                  log=lines.append)
  names = sorted(os.listdir(tmp_path / "figures"))
  assert names == ["branch_law.png", "compute_optimal.png", "granularity.png",
                   "isoflop.png", "law_fit.png", "leverage.png"]
  for name in names:
    with open(tmp_path / "figures" / name, "rb") as f:
      head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n", name
    assert os.path.getsize(tmp_path / "figures" / name) > 10_000, name
  text = (tmp_path / "report.md").read_text()
  for name in names:
    assert f"](figures/{name})" in text
  assert "## IsoFLOP minima: the data against the law" in text
  assert "## The paper's claims against this sweep" in text
  def strict(constant):  # NaN or Infinity: not JSON that every reader takes
    raise AssertionError(f"fits.json holds {constant}")
  saved = json.loads((tmp_path / "fits.json").read_text(),
                     parse_constant=strict)
  assert saved["selected_form"] == report["selected_form"]
  minima = saved["analysis"]["isoflop_minima"]
  # 3 budgets x G in {1, 2, 4}, 4 sizes each; tiny_cpu's lowest losses all
  # lie at its smallest size (the committed report says so).
  assert len(minima) == 9 and all(r["points"] == 4 for r in minima)
  assert all(r["edge"] == "smallest" for r in minima)
  assert any("wrote 6 figures" in line for line in lines)
  # The leverage figure's observed markers: each G > 1 at each of the 3
  # budgets, the per-budget means the EL claim quotes.
  observed = saved["analysis"]["observed_leverage"]
  assert sorted(observed) == ["2", "4"]
  claim = next(c for c in saved["claims"]
               if c["claim"].startswith("Efficiency Leverage"))
  for g, rows in observed.items():
    assert [r["budget"] for r in rows] == sorted(sweep.budgets)
    quoted = ", ".join(f"{r['loss_ratio']:.3f}" for r in rows)
    assert f"G = {g}: {quoted}" in claim["observed"]
  # The granularity figure's pairs, by hand from the committed CSV: each G > 1
  # point's mean exit loss over the G = 1 point of its budget and d_model,
  # and (E + A / N^alpha + B / D^beta) G^gamma for the same two points.
  rows = {}
  with open(os.path.join(COMMITTED, "results.csv")) as f:
    head = f.readline().strip().split(",")
    for line in f:
      r = dict(zip(head, line.strip().split(",")))
      key = (float(r["budget"]), int(r["d_model"]), int(r["granularity"]))
      rows.setdefault(key, []).append(
          (float(r["loss"]), float(r["params"]), float(r["tokens"])))
  p = saved["fits"]["multiplicative"]["params"]
  law = lambda n, d, g: (p["E"] + p["A"] / n ** p["alpha"] +
                         p["B"] / d ** p["beta"]) * g ** p["gamma"]
  want = []
  for (c, width, g), exits in sorted(rows.items()):
    if g == 1:
      continue
    (n, d), dense = exits[0][1:], rows[(c, width, 1)][0]
    want.append((g, np.mean([e[0] for e in exits]) / dense[0],
                 law(n, d, g) / law(dense[1], dense[2], 1)))
  pairs = plots.granularity_pairs(ResultsStore(str(tmp_path)).table(), saved)
  got = sorted(zip(pairs["granularity"], pairs["observed"], pairs["law"]))
  assert len(got) == len(want) == 24
  assert np.array(got) == pytest.approx(np.array(sorted(want)), rel=1e-6)
  # A user's table has no shape column: the same pairs from N alone (a
  # family's N is its dense partner's plus the exit norms), per model.
  family = laws.table.family_table(laws.table.load_csv(
      os.path.join(COMMITTED, "results.csv")))
  assert "d_model" not in family and "exit" not in family
  pairs = plots.granularity_pairs(family, saved)
  assert np.array(sorted(zip(pairs["granularity"], pairs["observed"],
                             pairs["law"]))) == pytest.approx(
                                 np.array(sorted(want)), rel=1e-6)


def test_isoflop_stars_come_from_the_data_without_a_sweep_analysis():
  """The IsoFLOP figure's stars for a plain table (fit_law on a CSV: no
  plan.json, so no sweep analysis) are the data's own bracketed minima; on
  the committed cpu_large CSV they are the 15 of 24 profiles its report.md
  counts, the same rows as its committed analysis."""
  path = os.path.join(REPO, "experiments", "results", "cpu_large")
  table = laws.table.load_csv(os.path.join(path, "results.csv"))
  stars = plots.bracketed_minima(table, {"fits": {}})
  assert len(stars) == 15
  with open(os.path.join(path, "fits.json")) as f:
    committed = plots.bracketed_minima(table, json.load(f))
  assert sorted(stars) == sorted(committed)
  for key, row in stars.items():
    assert row["params"] == pytest.approx(committed[key]["params"], rel=1e-9)
  assert plots.bracketed_minima(table,
                                {"analysis": {"isoflop_minima": []}}) == {}


@pytest.mark.parametrize("n_budgets", [6, 12])
def test_isoflop_curves_name_up_to_8_budgets_then_use_a_colour_bar(
    tmp_path, monkeypatch, n_budgets):
  """Beyond 8 budgets (a table that is not an IsoFLOP design: 6ND budgets)
  a legend would run off the figure (57 entries for the data-constrained
  reference data): a colour bar of log C instead."""
  drawn = []
  monkeypatch.setattr(plots, "_save", lambda fig, path, rect=None: (
      drawn.append(fig), path)[1])
  budgets = np.geomspace(1e18, 1e21, n_budgets)
  n = np.array([c ** 0.5 * f for c in budgets for f in (0.1, 0.3, 1.0)])
  c = np.repeat(budgets, 3)
  table = {"params": n, "tokens": c / (6 * n), "budget": c,
           "loss": 2 + 300 / n ** 0.3 + 300 / (c / (6 * n)) ** 0.3}
  assert plots.isoflop_curves(table, {"fits": {}}, None, "x.png") == "x.png"
  (fig,) = drawn
  if n_budgets <= 8:
    assert len(fig.axes) == 1
    assert len(fig.axes[0].get_legend().get_texts()) == n_budgets
  else:
    panel, bar = fig.axes
    assert panel.get_legend() is None
    assert bar.get_ylabel() == f"C ({n_budgets} budgets)"


def test_training_curves_draw_each_exits_logged_losses(monkeypatch):
  """experiments/train.py's curves.png: per exit, the logged training losses
  as a line and the validation losses (during training and final) as
  markers; nothing for a record without a history."""
  drawn = []
  monkeypatch.setattr(plots, "_save", lambda fig, path, rect=None: (
      drawn.append(fig), path)[1])
  record = {"G": 2, "N": 1000, "D": 5000, "steps": 30,
            "train_history": [{"step": s, "loss": 3.0 - s / 100,
                               "exit_losses": [3.1 - s / 100, 2.9 - s / 100]}
                              for s in (10, 20, 30)],
            "eval_history": [{"step": 20, "exit_losses": [2.95, 2.85]}],
            "exit_losses": [2.8, 2.7]}
  assert plots.training_curves(record, "c.png") == "c.png"
  lines = {l.get_label(): l for l in drawn[0].axes[0].get_lines()}
  np.testing.assert_allclose(lines["exit 2, train"].get_ydata(),
                             [2.8, 2.7, 2.6])
  np.testing.assert_array_equal(lines["exit 1, validation"].get_xdata(),
                                [20, 30])
  np.testing.assert_allclose(lines["exit 1, validation"].get_ydata(),
                             [2.95, 2.8])
  assert plots.training_curves(dict(record, train_history=[]), "c.png") is None
