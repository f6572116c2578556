"""The end of a sweep: fits, every figure and report.md from real records."""

import glob
import json
import os
import shutil

from familial_jax import isoflop
from familial_jax import sweep as sweep_lib

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
