r"""Relay decoding of a trained family across tiers: quality vs compute/latency.

Loads a trained family (a train.py workdir or a sweep's runs/<point id>),
takes held-out windows of its corpus as prompts, and for every threshold of
the exit policy
  1. generates --new_tokens greedily and measures agreement with the full
     model's own greedy tokens (position by position);
  2. reads the held-out continuation with teacher forcing and measures the
     loss of the distributions the relay emitted (nats/token);
and reports both against mean FLOPs per token (with each tier's share) and
modelled latency per token, as a table (printed, relay.csv, relay.json) and
a trade-off figure (tradeoff.png).

  python experiments/relay.py --workdir=runs/sweep/runs/C1.35e+11-G4-L4 \
      --output=experiments/results/relay --tiers="0;1;2,3"

Tier profile defaults (familial_jax.relay.TierProfile.default): device 2
TFLOP/s, edge 20, cloud 200; device-edge 100 Mbit/s and 20 ms, edge-cloud
1 Gbit/s and 10 ms; override with --tier_flops, --link_bandwidth (bytes/s)
and --link_latency (seconds).
"""

import csv
import datetime
import json
import math
import os
import sys

from absl import app
from absl import flags
import numpy as np

from familial_jax import relay
from familial_jax import train
from familial_jax.data import pipeline

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained family's workdir.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory for the results.")
_TIERS = flags.DEFINE_string(
    "tiers", None, "Segments per tier, tiers separated by ';', e.g. "
    "'0;1;2,3'. Default: one segment per tier.")
_POLICY = flags.DEFINE_enum("policy", "confidence",
                            ["confidence", "entropy"], "Threshold policy.")
_THRESHOLDS = flags.DEFINE_list(
    "thresholds", ["0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9",
                   "0.95", "1.01"], "Policy thresholds (1.01 never exits "
    "early under the confidence policy).")
_PROMPTS = flags.DEFINE_integer("prompts", 32, "Held-out prompts (batch).",
                                lower_bound=1)
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 32, "Prompt tokens.",
                                   lower_bound=1)
_NEW = flags.DEFINE_integer("new_tokens", 32, "Tokens per request.",
                            lower_bound=1)
_WINDOW = flags.DEFINE_integer("window", 16, "Catch-up window (positions).",
                               lower_bound=1)
_FLOPS = flags.DEFINE_list("tier_flops", None, "FLOP/s of each tier.")
_BW = flags.DEFINE_list("link_bandwidth", None, "Bytes/s of each link.")
_LAT = flags.DEFINE_list("link_latency", None, "Seconds per hand-off.")


def _numbers(values) -> bool:
  """Whether a list flag holds one or more numbers (none NaN)."""
  try:
    return bool(values) and not any(math.isnan(float(v)) for v in values)
  except (TypeError, ValueError):
    return False


# Checked when the flags are parsed, before the family loads.
flags.register_validator("thresholds", _numbers,
                         "--thresholds must be a comma-separated list of "
                         "numbers.")
for _name in ("tier_flops", "link_bandwidth", "link_latency"):
  flags.register_validator(_name, lambda v: v is None or _numbers(v),
                           f"--{_name} must be a comma-separated list of "
                           "numbers.")


def parse_tiers(text):
  if not text:
    return None
  try:
    return [[int(s) for s in tier.split(",")] for tier in text.split(";")]
  except ValueError:
    raise ValueError(f"--tiers={text!r}: use segment indices like "
                     "'0;1;2,3'.") from None


def profile(n_tiers):
  base = relay.TierProfile.default(n_tiers)
  pick = lambda flag, default: (tuple(float(x) for x in flag.value)
                                if flag.value else default)
  return relay.TierProfile(pick(_FLOPS, base.flops_per_second),
                           pick(_BW, base.link_bandwidth),
                           pick(_LAT, base.link_latency))


def run(workdir, output):
  cfg, params = relay.load_family(workdir)
  tier_map = parse_tiers(_TIERS.value)
  n_tiers = max(relay.check_tier_map(tier_map, cfg.model.granularity)) + 1
  r = relay.Relay(cfg.model, params, tier_map, profile(n_tiers),
                  _WINDOW.value)
  data = train.load_data(cfg.data)
  length = _PROMPT_LEN.value + _NEW.value
  # The first held-out windows, as the committed relay results used.
  windows = pipeline.validation_windows(data.validation, length,
                                        _PROMPTS.value, "first")
  if len(windows) < _PROMPTS.value:
    raise ValueError(f"the validation split holds only {len(windows)} windows "
                     f"of {length + 1} tokens; ask for fewer prompts.")
  text = windows[:, :length]
  prompts = text[:, :_PROMPT_LEN.value]
  full = r.decode(prompts, _NEW.value, relay.Policy("fixed",
                                                     index=r.G - 1))["tokens"]
  rows = []
  for threshold in [float(t) for t in _THRESHOLDS.value]:
    policy = relay.Policy(_POLICY.value, threshold=threshold)
    gen = r.decode(prompts, _NEW.value, policy)
    forced = r.decode(prompts, _NEW.value, policy, forced=text)
    n = _NEW.value
    row = {
        "policy": _POLICY.value, "threshold": threshold,
        "agreement": float((gen["tokens"][:, -n:] == full[:, -n:]).mean()),
        "heldout_loss": float(forced["nll"].mean()),
        "mean_exit": float(forced["exits"].mean() + 1),
        "exit_share": np.bincount(forced["exits"].ravel(),
                                  minlength=r.G).tolist(),
        "flops_per_token": float(forced["flops"].sum(1).mean() / n),
        "flops_per_token_by_tier": (forced["flops"].mean(0) / n).tolist(),
        "latency_ms_per_token": float(forced["latency"].mean() / n * 1e3),
        "bytes_per_token": float(forced["bytes"].mean() / n),
        "recomputed_per_token": float(forced["recomputed"].mean() / n)}
    rows.append(row)
    print(f"{policy.kind} {threshold:<5} agreement {row['agreement']:.3f} "
          f"held-out loss {row['heldout_loss']:.4f} mean exit "
          f"{row['mean_exit']:.2f} FLOPs/token {row['flops_per_token']:,.0f} "
          f"latency {row['latency_ms_per_token']:.2f} ms bytes/token "
          f"{row['bytes_per_token']:,.0f} recomputed/token "
          f"{row['recomputed_per_token']:.2f}")
  record = {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
      "workdir": os.path.abspath(workdir), "config": cfg.to_dict(),
      "tier_of_segment": list(r.tier_of),
      "profile": {"flops_per_second": r.profile.flops_per_second,
                  "link_bandwidth": r.profile.link_bandwidth,
                  "link_latency": r.profile.link_latency},
      "prompts": _PROMPTS.value, "prompt_len": _PROMPT_LEN.value,
      "new_tokens": _NEW.value, "corpus": data.corpus_info,
      "versions": train.versions(), "rows": rows}
  if output:
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "relay.json"), "w") as f:
      json.dump(record, f, indent=1)
    with open(os.path.join(output, "relay.csv"), "w", newline="") as f:
      keys = [k for k in rows[0] if not isinstance(rows[0][k], list)]
      writer = csv.DictWriter(f, keys, extrasaction="ignore")
      writer.writeheader()
      writer.writerows(rows)
    draw(rows, os.path.join(output, "tradeoff.png"))
    print(f"wrote relay.json, relay.csv and tradeoff.png under {output}")
  return record


def draw(rows, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  x_flops = [r["flops_per_token"] / 1e6 for r in rows]
  x_lat = [r["latency_ms_per_token"] for r in rows]
  for ax, x, label in [(axes[0], x_flops, "MFLOPs per token"),
                       (axes[1], x_lat, "modelled latency per token (ms)")]:
    ax.plot(x, [r["heldout_loss"] for r in rows], "o-", label="held-out loss")
    ax.set_xlabel(label)
    ax.set_ylabel("held-out loss (nats/token)")
    twin = ax.twinx()
    twin.plot(x, [r["agreement"] for r in rows], "s--", color="C1",
              label="agreement with full model")
    twin.set_ylabel("agreement with full model")
    for r, xi in zip(rows, x):
      ax.annotate(f"{r['threshold']:g}", (xi, r["heldout_loss"]), fontsize=7)
  axes[0].set_title("relay: quality vs compute")
  axes[1].set_title("relay: quality vs latency")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (a trained family).")
  try:
    run(_WORKDIR.value, _OUTPUT.value)
  except ValueError as e:
    sys.exit(f"relay: error: {e}")


if __name__ == "__main__":
  app.run(main)
