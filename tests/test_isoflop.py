"""IsoFLOP planning and the results store."""

import dataclasses
import importlib.util
import json
import os

import numpy as np
import pytest

from familial_jax import flops, isoflop
from familial_jax.results import ResultsStore

SWEEP = isoflop.SweepConfig(
    budgets=(2e10, 6e10), granularities=(1, 2, 4), depths=(2, 4, 5),
    ladder=flops.ShapeLadder(vocab_size=256, seq_len=64, aspect_ratio=8.0,
                             head_dim=8), batch_size=8, min_steps=15)


def test_every_point_spends_its_budget():
  points, dropped = isoflop.plan(SWEEP)
  assert {p.id for p in points} | {i for i, _ in dropped} == {
      isoflop.point_id(c, g, l) for c in SWEEP.budgets
      for g in SWEEP.granularities for l in SWEEP.depths}
  for p in points:
    fpt = flops.flops_per_token(p.model, 64).train
    assert p.flops_per_token == fpt
    assert p.compute == p.tokens * fpt
    # Rounding to whole steps moves C by at most half a step's FLOPs.
    assert abs(p.compute - p.budget) <= 0.5 * fpt * 8 * 64
    assert len(p.model.exit_layers) == p.granularity
    assert p.model.exit_layers[-1] == p.depth == p.model.n_layers
  assert len({p.id for p in points}) == len(points)


def test_drops_say_why():
  points, dropped = isoflop.plan(SWEEP)
  reasons = dict(dropped)
  assert "need depth >= 4" in reasons["C2e+10-G4-L2"]
  tiny = dataclasses.replace(SWEEP, budgets=(1e6,))
  points, dropped = isoflop.plan(tiny)
  assert not points and all("min_steps" in w or "depth" in w
                            for _, w in dropped)
  _, dropped = isoflop.plan(SWEEP, train_tokens=20_000)
  assert any("epochs > max_epochs" in w for _, w in dropped)
  _, dropped = isoflop.plan(dataclasses.replace(SWEEP,
                                                max_tokens_per_param=0.5))
  assert any("D/N" in w for _, w in dropped)


def test_bad_sweep_configs():
  with pytest.raises(ValueError, match="depths is empty"):
    dataclasses.replace(SWEEP, depths=())
  with pytest.raises(ValueError, match="budgets must be > 0"):
    dataclasses.replace(SWEEP, budgets=(1e10, -1.0))
  with pytest.raises(ValueError, match="unknown sweep config field"):
    isoflop.sweep_from_dict({"budgets": [1e10], "widths": [3]})
  with pytest.raises(ValueError, match="shard index"):
    isoflop.shard([], 2, 2)
  with pytest.raises(ValueError, match="checkpoint_minutes must be >= 0"):
    dataclasses.replace(SWEEP, checkpoint_minutes=-1.0)
  with pytest.raises(ValueError, match="flops_per_second must be > 0"):
    dataclasses.replace(SWEEP, flops_per_second=0.0)
  # Before: a repeated G, budget or depth planned its points twice under one
  # id; batch_size=0 was a ZeroDivisionError in plan(); max_epochs=0 and
  # min > max tokens per parameter dropped every point without saying why.
  for change, message in [
      (dict(granularities=(1, 2, 2)), r"granularities repeats \[2\]"),
      (dict(budgets=(1e10, 1e10)), "budgets repeats"),
      (dict(depths=(2, 3, 2)), r"depths repeats \[2\]"),
      (dict(batch_size=0), "batch_size must be a positive integer"),
      (dict(eval_windows=0), "eval_windows must be a positive integer"),
      (dict(min_steps=-1), "min_steps must be an integer >= 0"),
      (dict(learning_rate=float("nan")), "learning_rate must be finite"),
      (dict(max_epochs=0.0), "max_epochs must be > 0"),
      (dict(min_tokens_per_param=5.0, max_tokens_per_param=1.0),
       "min_tokens_per_param <= max_tokens_per_param")]:
    with pytest.raises(ValueError, match=message):
      dataclasses.replace(SWEEP, **change)
  no_limit = dataclasses.replace(SWEEP, max_epochs=float("inf"), min_steps=0)
  assert len(isoflop.plan(no_limit)[0]) >= len(isoflop.plan(SWEEP)[0])


def test_checkpoint_cadence_is_planned_training_time():
  # 1 planned second per step: fpt * batch * seq_len FLOPs at that rate.
  points, _ = isoflop.plan(SWEEP)
  p = max(points, key=lambda q: q.train.steps)
  step_flops = p.flops_per_token * 8 * 64
  one_second = dataclasses.replace(SWEEP, flops_per_second=step_flops)
  assert p.train.steps > 60  # so every cadence below is a mid-run one
  for minutes, every in ((0.5, 30), (1.0, 60), (0.0, 0), (1e-9, 1)):
    sweep = dataclasses.replace(one_second, checkpoint_minutes=minutes)
    planned = {q.id: q for q in isoflop.plan(sweep)[0]}[p.id]
    assert planned.train.checkpoint_every == every, minutes
  # A point shorter than the interval checkpoints only at the end.
  long = dataclasses.replace(one_second,
                             checkpoint_minutes=p.train.steps / 60)
  planned = {q.id: q for q in isoflop.plan(long)[0]}[p.id]
  assert planned.train.checkpoint_every == 0
  # The default (10 minutes at 2e10 FLOP/s) leaves these small points none.
  assert all(q.train.checkpoint_every == 0 for q in isoflop.plan(SWEEP)[0])


def _shape(p):
  return (p.granularity, p.depth)


def test_shards_partition_the_plan_by_shape():
  points, _ = isoflop.plan(SWEEP)
  shapes = {_shape(p) for p in points}
  assert len(shapes) == 8 and len(points) == 16
  for count in (1, 2, 3, 7):
    shards = [isoflop.shard(points, i, count) for i in range(count)]
    ids = [p.id for s in shards for p in s]
    assert sorted(ids) == sorted(p.id for p in points)
    assert len(ids) == len(set(ids))
    # Whole shapes: no two shards compile one program.
    owners = {}
    for i, s in enumerate(shards):
      assert [p.id for p in s] == sorted(p.id for p in s)
      for p in s:
        assert owners.setdefault(_shape(p), i) == i
    # Balanced by planned compute: greedy assignment, largest first, keeps
    # every shard within one shape's compute of the lightest.
    loads = [sum(p.compute for p in s) for s in shards]
    biggest = max(sum(p.compute for p in points if _shape(p) == k)
                  for k in shapes)
    assert max(loads) - min(loads) <= biggest
  # Fewer shapes than shards: points dealt round robin, no shard left idle.
  shards = [isoflop.shard(points, i, 9) for i in range(9)]
  assert all(shards) and sum(map(len, shards)) == len(points)


def test_groups_run_shape_by_shape():
  points, _ = isoflop.plan(SWEEP)
  for size in (1, 2):
    groups = isoflop.groups(points, size)
    assert sorted(p.id for g in groups for p in g) == sorted(
        p.id for p in points)
    order = [_shape(g[0]) for g in groups]
    # Each shape's groups are consecutive (one build per shape per process).
    assert len(set(order)) == len(
        [k for i, k in enumerate(order) if i == 0 or order[i - 1] != k])
    for g in groups:
      assert len(g) <= size and len({_shape(p) for p in g}) == 1
      assert [p.train.steps for p in g] == sorted(p.train.steps for p in g)


def test_plan_table_lists_points_and_drops():
  points, dropped = isoflop.plan(SWEEP)
  text = isoflop.format_plan(SWEEP, points, dropped)
  assert f"{len(points)} points" in text and "dropped C2e+10-G4-L2" in text


def test_shard_table_says_what_each_shard_runs():
  points, _ = isoflop.plan(SWEEP)
  rows = isoflop.format_shards(SWEEP, points, 3).splitlines()[1:]
  assert len(rows) == 3
  for i, row in enumerate(rows):
    mine = isoflop.shard(points, i, 3)
    index, shapes, count, minutes = row.split()[:4]
    assert (int(index), int(count)) == (i, len(mine))
    assert int(shapes) == len({(p.granularity, p.depth) for p in mine})
    assert float(minutes) == pytest.approx(
        sum(p.compute for p in mine) / SWEEP.flops_per_second / 60, abs=0.06)


def _record(pid, losses=(3.0, 2.5)):
  return {"point_id": pid, "exit_losses": list(losses), "N": 1000,
          "N_g": [500, 1000], "D": 10_000, "C": 1e10, "G": 2, "budget": 1e10,
          "seed": 0, "versions": {}, "corpus": {}, "depth": 2,
          "config": {"model": {"d_model": 8}}}


def test_results_store_ignores_partial_or_foreign_records(tmp_path):
  store = ResultsStore(str(tmp_path))
  store.write(_record("a"))
  assert store.read("a")["complete"]
  with open(store.path("b"), "w") as f:
    f.write('{"point_id": "b", "exit_losses": [3.0')  # truncated write
  with open(store.path("c"), "w") as f:
    json.dump(dict(_record("c")), f)  # no "complete" marker
  with pytest.warns(UserWarning):
    assert store.read("b") is None
  with pytest.warns(UserWarning):
    assert [r["point_id"] for r in store.records()] == ["a"]
  with pytest.raises(ValueError, match="lacks"):
    store.write({"point_id": "d"})
  assert not any(f.startswith("a.json.tmp") for f in os.listdir(store.dir))


def test_results_csv_is_the_fit_schema(tmp_path):
  from familial_jax.laws import table as table_lib
  store = ResultsStore(str(tmp_path))
  store.write(_record("a", (3.0, 2.5)))
  store.write(_record("b", (2.9, 2.4)))
  table = table_lib.load_csv(store.write_csv())
  np.testing.assert_allclose(table["loss"], [3.0, 2.5, 2.9, 2.4])
  np.testing.assert_allclose(table["exit"], [1, 2, 1, 2])
  np.testing.assert_allclose(table["exit_params"], [500, 1000, 500, 1000])
  fam = table_lib.family_table(table)
  assert len(fam["loss"]) == 1  # same N, D, G, budget: one model's exits


def test_preset_starts_from_every_field_and_rejects_unknown_ones():
  """isoflop.preset: SweepConfig's defaults, the preset's changes (ladder and
  data merged field by field), n_boot beside them; what sweep_from_dict
  builds from it is the SweepConfig written out directly."""
  c = isoflop.preset(n_boot=7, budgets=(1e10, 3e10), depths=(2, 3),
                     ladder=dict(seq_len=64), data=dict(val_fraction=0.1))
  d = c.to_dict()
  assert d.pop("n_boot") == 7
  want = isoflop.SweepConfig(
      budgets=(1e10, 3e10), depths=(2, 3),
      ladder=flops.ShapeLadder(seq_len=64),
      data=dataclasses.replace(isoflop.SweepConfig().data, val_fraction=0.1))
  assert isoflop.sweep_from_dict(d) == want
  assert set(d) == {f.name for f in dataclasses.fields(isoflop.SweepConfig)}
  with pytest.raises(ValueError,
                     match=r"unknown sweep config field\(s\) \['budget'\]"):
    isoflop.preset(budget=(1e10,))
  with pytest.raises(ValueError, match=r"unknown ladder field\(s\) \['seq'\]"):
    isoflop.preset(ladder=dict(seq=64))
  # The same check where any preset (a plain ConfigDict too) is read.
  with pytest.raises(ValueError, match=r"unknown data field\(s\) \['src'\]"):
    isoflop.sweep_from_dict({"data": {"src": "default"}})


def test_validation_set_of_old_configs_stays_the_first_windows():
  """New configs validate on windows spread over the held-out stream; a
  config written before `eval_sample` existed (a committed plan.json, a run's
  config.json) reads as the first windows it used, and the presets of the
  committed CPU sweeps keep them, so that their reruns still match."""
  from familial_jax.config import DataConfig, TrainConfig
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def config(name):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(repo, "experiments", "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
  assert DataConfig().eval_sample == "spread"
  assert TrainConfig().data.eval_sample == "spread"
  assert DataConfig.from_dict({}).eval_sample == "first"
  assert TrainConfig.from_dict({"data": {}}).data.eval_sample == "first"
  assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
  with open(os.path.join(repo, "experiments", "results", "tiny_cpu",
                         "plan.json")) as f:
    plan = json.load(f)
  assert "eval_sample" not in plan["sweep"]["data"]
  committed = isoflop.sweep_from_dict(plan["sweep"])
  assert committed.data.eval_sample == "first"
  preset = isoflop.sweep_from_dict(
      {k: v for k, v in config("tiny_cpu").to_dict().items()
       if k != "n_boot"})
  assert preset.data == committed.data
  for name, sample in (("cpu_large", "first"), ("gpu_h100", "spread"),
                       ("tpu_paper", "spread")):
    assert config(name).to_dict()["data"]["eval_sample"] == sample, name
  assert config("train_tiny").data.eval_sample == "spread"
  with pytest.raises(ValueError, match="eval_sample='last' is not one of"):
    DataConfig(eval_sample="last")
