"""IsoFLOP sweep planning: budgets x granularities x size ladder -> points.

For every (budget C, granularity G, ladder rung of depth L) the planner builds
the rung's `ModelConfig` with G uniform exits, counts its exact training FLOPs
per token (attention and every exit head included; `flops.py`) and sets

    steps = round(C / (train_flops_per_token * batch * seq_len)),
    D = steps * batch * seq_len,   C_point = D * train_flops_per_token,

so every point of one budget costs the budget (up to the rounding of one
step). Points outside the limits are dropped, each with its reason: G above
the depth, fewer than `min_steps` steps, tokens per parameter outside
[min_tokens_per_param, max_tokens_per_param], or more than `max_epochs` passes
over the training tokens.

Point ids are stable: "C{budget:.3g}-G{G}-L{depth}", e.g. "C1.8e+11-G2-L3".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from familial_jax import flops
from familial_jax.config import DataConfig, ModelConfig, TrainConfig
from familial_jax.config import require_ints, require_number


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """An IsoFLOP sweep.

  Attributes:
    budgets: training FLOP budgets C.
    granularities: values of G.
    depths: ladder rungs (n_layers); width follows the ladder's aspect ratio.
    ladder: the shape ladder (vocabulary, sequence length, aspect ratio, ...).
    data: text source.
    batch_size: global batch (sequences).
    learning_rate: peak learning rate of every run.
    warmup_fraction: warmup steps as a fraction of each run.
    seed: seed of every run.
    mesh_shape: (data, fsdp, tensor) of every run.
    min_steps: points with fewer steps are dropped.
    min_tokens_per_param, max_tokens_per_param: D / N limits.
    max_epochs: D / (training tokens of the corpus) limit.
    eval_windows: validation windows per run.
    flops_per_second: assumed sustained FLOP/s, for time estimates and the
      checkpoint cadence.
    checkpoint_minutes: a point saves a checkpoint after every this many
      minutes of planned training (at `flops_per_second`), so a crash loses
      at most about that much; points shorter than that save only at the
      end (and on SIGTERM). 0: only at the end. The cadence is in steps,
      fixed by the plan, so every host of a multi-process run saves at the
      same steps.
    compute_dtype: compute dtype of every model ("bfloat16" on accelerators;
      master weights stay float32).
    attention: attention implementation ("xla", "cudnn", "auto").
    remat: rematerialisation policy (ModelConfig.remat).
    loss_logits_dtype: TrainConfig.loss_logits_dtype of every run.
    group_size: up to this many points of one model shape (across budgets)
      train together in one vmapped program (`train.run_group`); 1 trains
      points one by one.
  """

  budgets: tuple[float, ...] = (1e11, 3e11, 1e12)
  granularities: tuple[int, ...] = (1, 2, 4)
  depths: tuple[int, ...] = (1, 2, 3, 4)
  ladder: flops.ShapeLadder = flops.ShapeLadder()
  data: DataConfig = DataConfig()
  batch_size: int = 16
  learning_rate: float = 3e-3
  warmup_fraction: float = 0.05
  seed: int = 0
  mesh_shape: tuple[int, int, int] = (-1, 1, 1)
  min_steps: int = 20
  min_tokens_per_param: float = 0.0
  max_tokens_per_param: float = float("inf")
  max_epochs: float = 4.0
  eval_windows: int = 64
  flops_per_second: float = 2e10
  checkpoint_minutes: float = 10.0
  compute_dtype: str = "float32"
  attention: str = "xla"
  remat: str = "none"
  loss_logits_dtype: str = "float32"
  group_size: int = 1

  def __post_init__(self):
    for name in ("budgets", "granularities", "depths"):
      values = tuple(getattr(self, name))
      if not values:
        raise ValueError(f"SweepConfig.{name} is empty; give at least one.")
      object.__setattr__(self, name, values)
      repeated = sorted({v for v in values if values.count(v) > 1})
      if repeated:  # each would plan its points twice, under one id
        raise ValueError(f"SweepConfig.{name} repeats {repeated}; give each "
                         "value once.")
    if any(not c > 0 for c in self.budgets):
      raise ValueError(f"SweepConfig.budgets must be > 0: {self.budgets}.")
    if any(not isinstance(g, int) or g < 1 for g in self.granularities):
      raise ValueError(f"SweepConfig.granularities must be integers >= 1: "
                       f"{self.granularities}.")
    if any(not isinstance(l, int) or l < 1 for l in self.depths):
      raise ValueError(
          f"SweepConfig.depths must be integers >= 1: {self.depths}.")
    require_ints(self, ("batch_size", "eval_windows"), 1)
    require_ints(self, ("min_steps",), 0)
    require_number(self, "learning_rate", lambda v: 0 < v < math.inf,
                   "finite and > 0")
    require_number(self, "max_epochs", lambda v: v > 0,
                   "> 0 (inf: no limit)")
    if not (0 <= self.min_tokens_per_param <= self.max_tokens_per_param):
      raise ValueError(
          "SweepConfig needs 0 <= min_tokens_per_param <= max_tokens_per_param,"
          f" got {self.min_tokens_per_param!r} and "
          f"{self.max_tokens_per_param!r}.")
    if not self.flops_per_second > 0:
      raise ValueError(f"SweepConfig.flops_per_second must be > 0, got "
                       f"{self.flops_per_second!r}.")
    if not self.checkpoint_minutes >= 0:
      raise ValueError(f"SweepConfig.checkpoint_minutes must be >= 0, got "
                       f"{self.checkpoint_minutes!r}.")
    if not 0 <= self.warmup_fraction < 1:
      raise ValueError("SweepConfig.warmup_fraction must be in [0, 1).")
    if (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
        or self.group_size < 1):
      raise ValueError(f"SweepConfig.group_size must be an integer >= 1, got "
                       f"{self.group_size!r}.")
    # Validates dtype, attention, remat and the loss' logits dtype with
    # ModelConfig's and TrainConfig's messages.
    ModelConfig(dtype=self.compute_dtype, attention=self.attention,
                remat=self.remat)
    TrainConfig(loss_logits_dtype=self.loss_logits_dtype)


@dataclasses.dataclass(frozen=True)
class SweepPoint:
  """One run of the sweep."""

  id: str
  budget: float
  granularity: int
  depth: int
  train: TrainConfig
  flops_per_token: int  # training FLOPs per token (3 x forward)

  @property
  def model(self) -> ModelConfig:
    return self.train.model

  @property
  def params(self) -> int:
    return flops.non_embedding_params(self.model)

  @property
  def tokens(self) -> int:
    return self.train.tokens

  @property
  def compute(self) -> float:
    """C of what the point trains: D x training FLOPs per token."""
    return float(self.tokens) * self.flops_per_token


def _check_names(what: str, given, cls) -> None:
  """Raises ValueError naming the fields of `given` that `cls` lacks."""
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(given) - known)
  if unknown:
    raise ValueError(f"unknown {what} field(s) {unknown}; known: "
                     f"{sorted(known)}.")


def sweep_from_dict(d: dict) -> SweepConfig:
  """SweepConfig from a plain dict (an ml_collections ConfigDict's to_dict).

  Raises:
    ValueError: a field SweepConfig, its ladder or its data do not have, or
      a value they refuse.
  """
  d = dict(d)
  ladder, data = d.pop("ladder", {}), d.pop("data", {})
  _check_names("sweep config", d, SweepConfig)
  _check_names("ladder", ladder, flops.ShapeLadder)
  _check_names("data", data, DataConfig)
  return SweepConfig(
      ladder=flops.ShapeLadder(**ladder), data=DataConfig.from_dict(data),
      **{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def preset(n_boot: int = 100, **fields):
  """A sweep preset as an ml_collections ConfigDict: every SweepConfig field
  at its default, updated with `fields` (`ladder` and `data` as dicts of the
  fields they change), plus `n_boot` (bootstrap replicates of the fit). A
  preset built this way takes `--config.FIELD=...` for any field.

  Raises:
    ValueError: what `sweep_from_dict` refuses.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  d = dataclasses.asdict(SweepConfig())
  ladder, data = fields.pop("ladder", {}), fields.pop("data", {})
  d.update(fields, ladder=dict(d["ladder"], **ladder),
           data=dict(d["data"], **data))
  sweep_from_dict(d)
  # A None default (the data's path, TFDS name and directory) is an unset
  # string: typed, so that --config.data.path=... can set it.
  d["data"] = {k: ml_collections.FieldReference(None, field_type=str)
               if v is None else v for k, v in d["data"].items()}
  return ml_collections.ConfigDict(dict(d, n_boot=n_boot))


def point_id(budget: float, granularity: int, depth: int) -> str:
  return f"C{budget:.3g}-G{granularity}-L{depth}"


def plan(sweep: SweepConfig, train_tokens: int | None = None
         ) -> tuple[list[SweepPoint], list[tuple[str, str]]]:
  """Plans the sweep.

  Args:
    sweep: the sweep config.
    train_tokens: tokens in the training split (for the epoch limit); None
      skips that check.

  Returns:
    (points sorted by id, dropped [(id, reason)]).
  """
  ladder = sweep.ladder
  tokens_per_step = sweep.batch_size * ladder.seq_len
  points, dropped = [], []
  for budget in sweep.budgets:
    for g in sweep.granularities:
      for depth in sweep.depths:
        pid = point_id(budget, g, depth)
        if g > depth:
          dropped.append((pid, f"G={g} exits need depth >= {g}"))
          continue
        model = dataclasses.replace(
            ladder.config(depth, g), dtype=sweep.compute_dtype,
            attention=sweep.attention, remat=sweep.remat)
        fpt = flops.flops_per_token(model, ladder.seq_len).train
        steps = int(round(budget / (fpt * tokens_per_step)))
        n = flops.non_embedding_params(model)
        d = steps * tokens_per_step
        if steps < sweep.min_steps:
          dropped.append((pid, f"{steps} steps < min_steps={sweep.min_steps}"))
          continue
        if not sweep.min_tokens_per_param <= d / n <= sweep.max_tokens_per_param:
          dropped.append((pid, f"D/N = {d / n:.3g} outside "
                               f"[{sweep.min_tokens_per_param}, "
                               f"{sweep.max_tokens_per_param}]"))
          continue
        if train_tokens is not None and d > sweep.max_epochs * train_tokens:
          dropped.append((pid, f"{d / train_tokens:.2f} epochs > max_epochs="
                               f"{sweep.max_epochs}"))
          continue
        train = TrainConfig(
            model=model, data=sweep.data, seq_len=ladder.seq_len,
            batch_size=sweep.batch_size, steps=steps,
            learning_rate=sweep.learning_rate,
            warmup_steps=int(sweep.warmup_fraction * steps),
            seed=sweep.seed, mesh_shape=sweep.mesh_shape,
            eval_windows=sweep.eval_windows,
            loss_logits_dtype=sweep.loss_logits_dtype,
            log_every=max(1, steps // 4),
            checkpoint_every=checkpoint_cadence(sweep, fpt, steps))
        points.append(SweepPoint(pid, budget, g, depth, train, fpt))
  return sorted(points, key=lambda p: p.id), dropped


def checkpoint_cadence(sweep: SweepConfig, flops_per_token: float,
                       steps: int) -> int:
  """Steps between a point's mid-run checkpoints (0: none): the steps of
  `sweep.checkpoint_minutes` of planned training at `sweep.flops_per_second`.

  Every save costs a fixed time (about 0.15 s for the small models of
  `benchmarks/sweep_throughput.py --small` on a 2-core CPU, measured); a
  point that trains for seconds gains nothing from a mid-run one.
  """
  step_seconds = (flops_per_token * sweep.batch_size * sweep.ladder.seq_len /
                  sweep.flops_per_second)
  every = sweep.checkpoint_minutes * 60 / step_seconds
  if sweep.checkpoint_minutes == 0 or every >= steps:
    return 0
  return max(1, int(every))


def by_shape(points: Sequence[SweepPoint]) -> list[list[SweepPoint]]:
  """The points grouped by model shape: points whose TrainConfigs differ only
  in length and schedule (`train.GROUP_FREE`), which share one compiled
  program. Shapes in order of their first point's id; points in id order."""
  from familial_jax import train  # pylint: disable=g-import-not-at-top
  shapes: dict[str, list[SweepPoint]] = {}
  for p in sorted(points, key=lambda p: p.id):
    key = repr(sorted((k, repr(v))
                      for k, v in train.group_key(p.train).items()))
    shapes.setdefault(key, []).append(p)
  return list(shapes.values())


def groups(points: Sequence[SweepPoint], size: int
           ) -> list[list[SweepPoint]]:
  """Splits points into groups that `train.run_group` can train together,
  in the order a sweep runs them.

  Each shape's points are sorted by steps and cut into groups of at most
  `size`, so that each group's members have similar lengths. The groups come
  shape by shape, so that one process builds, traces and compiles each shape
  once: in id order (budget by budget), a sweep with more shapes than
  `train` keeps built trainers for would build one for every point.
  """
  out = []
  for members in by_shape(points):
    members = sorted(members, key=lambda p: (p.train.steps, p.id))
    out += [members[i:i + size] for i in range(0, len(members), size)]
  return out


def shards(points: Sequence[SweepPoint], count: int
           ) -> list[list[SweepPoint]]:
  """The points of each of `count` shards, each in id order.

  Whole shapes go to shards (largest planned compute first, each to the
  least loaded shard), so that no two shards compile the same program and a
  shard can group a shape's budgets (`groups`). With fewer shapes than
  shards some shards would get none, so the points are then dealt round
  robin over the sorted plan instead.
  """
  if count < 1:
    raise ValueError(f"shard count {count} is not >= 1.")
  shapes = by_shape(points)
  if len(shapes) < count:
    ordered = sorted(points, key=lambda p: p.id)
    return [ordered[i::count] for i in range(count)]
  weighed = sorted(((sum(p.compute for p in m), m) for m in shapes),
                   key=lambda cm: (-cm[0], cm[1][0].id))
  load, out = [0.0] * count, [[] for _ in range(count)]
  for compute, members in weighed:
    j = min(range(count), key=lambda i: (load[i], i))
    load[j] += compute
    out[j] += members
  return [sorted(m, key=lambda p: p.id) for m in out]


def shard(points: Sequence[SweepPoint], index: int, count: int
          ) -> list[SweepPoint]:
  """Points of shard `index` of `count` (see `shards`), in id order."""
  if not 0 <= index < count:
    raise ValueError(f"shard index {index} is not in [0, {count}).")
  return shards(points, count)[index]


def format_plan(sweep: SweepConfig, points: Sequence[SweepPoint],
                dropped: Sequence[tuple[str, str]]) -> str:
  """The plan as a table, with estimated time at sweep.flops_per_second."""
  lines = [f"{'id':<18}{'C':>10}{'G':>3}{'d_model':>8}{'layers':>7}"
           f"{'N':>11}{'D':>12}{'steps':>7}{'est s':>8}"]
  total = 0.0
  for p in points:
    est = p.compute / sweep.flops_per_second
    total += est
    lines.append(f"{p.id:<18}{p.budget:>10.1e}{p.granularity:>3}"
                 f"{p.model.d_model:>8}{p.depth:>7}{p.params:>11,}"
                 f"{p.tokens:>12,}{p.train.steps:>7}{est:>8.1f}")
  lines.append(f"{len(points)} points, estimated {total / 60:.1f} min of "
               f"training at {sweep.flops_per_second:.1e} FLOP/s")
  for pid, why in dropped:
    lines.append(f"dropped {pid}: {why}")
  return "\n".join(lines)


def format_shards(sweep: SweepConfig, points: Sequence[SweepPoint],
                  count: int) -> str:
  """What each of `count` shards runs: shapes, points and planned time at
  sweep.flops_per_second (the slowest shard sets the sweep's wall time)."""
  lines = [f"{'shard':<7}{'shapes':>7}{'points':>7}{'est min':>9}  (G, layers)"]
  for i, mine in enumerate(shards(points, count)):
    shapes = sorted({(p.granularity, p.depth) for p in mine})
    est = sum(p.compute for p in mine) / sweep.flops_per_second / 60
    lines.append(f"{i:<7}{len(shapes):>7}{len(mine):>7}{est:>9.1f}  " +
                 " ".join(f"({g},{l})" for g, l in shapes))
  return "\n".join(lines)
