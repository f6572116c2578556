"""Relay inference: a trained family served by tiers that hand tokens on.

A family with G exits after layers l_1 < ... < l_G splits into G segments:
segment g holds blocks l_{g-1}+1 .. l_g (segment 0 also the embedding) and
exit head g. A tier map assigns consecutive segments to tiers (default: one
segment per tier, e.g. device, edge, cloud). Decoding a batch of requests,
at every token the first tier runs segment 0 and evaluates exit 0; an exit
policy decides, per request, whether to emit the token there or hand the
hidden state on to the next segment, and so on to the last exit.

KV caches and exactness. Each segment keeps a KV cache for its layers and
the residual stream it outputs. A token that exits at segment s leaves the
deeper segments without entries for its position. When a later token goes
deeper, the missing positions are recomputed first, in order, from the
stored output of the segment below ("catch-up"): one batched pass over a
window of up to `window` pending positions per segment, so a deep token pays
one pass for all of them. Every position a segment has processed therefore
holds exactly the keys, values and outputs a full-depth pass over the same
tokens would (tests/test_relay.py compares them with the training model).
We recompute rather than copy shallow states into deep layers (as CALM's
state propagation does) because copying changes the model's outputs.

Accounting, per request and in total: the exit taken per token, FLOPs per
tier (matmuls, attention over the context, exit heads), positions recomputed
by catch-ups, hidden-state bytes handed between tiers (every position a
segment computes whose input lives on another tier crosses that link), and a
modelled latency from a `TierProfile` (compute time per tier plus, per
hand-off, link latency + bytes / bandwidth).

Compile-once: each segment's window step and each exit head are jitted once
for the batch shape; the host loop only builds index arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from familial_jax.config import ModelConfig, TrainConfig, as_index
from familial_jax.config import require_number
from familial_jax.model import check_tokens, init_params, rotary

POLICIES = ("confidence", "entropy", "fixed", "oracle")


@dataclasses.dataclass(frozen=True)
class TierProfile:
  """Speeds of the tiers and of the links between consecutive tiers.

  Attributes:
    flops_per_second: sustained FLOP/s of each tier.
    link_bandwidth: bytes/s of the link from tier i to tier i + 1.
    link_latency: seconds per hand-off over that link.
  """

  flops_per_second: tuple[float, ...]
  link_bandwidth: tuple[float, ...]
  link_latency: tuple[float, ...]

  @classmethod
  def default(cls, n_tiers: int) -> "TierProfile":
    """Device, edge server, cloud (then more cloud): a phone NPU at 2 TFLOP/s
    sustained, an edge GPU at 20, a cloud GPU at 200; 100 Mbit/s and 20 ms
    from device to edge (a mobile link), 1 Gbit/s and 10 ms from edge to
    cloud, 10 Gbit/s and 1 ms beyond."""
    flops = (2e12, 2e13, 2e14) + (2e14,) * max(0, n_tiers - 3)
    bandwidth = (12.5e6, 125e6) + (1.25e9,) * max(0, n_tiers - 3)
    latency = (0.02, 0.01) + (0.001,) * max(0, n_tiers - 3)
    return cls(flops[:n_tiers], bandwidth[:n_tiers - 1], latency[:n_tiers - 1])

  def check(self, n_tiers: int) -> None:
    if len(self.flops_per_second) != n_tiers or len(
        self.link_bandwidth) != n_tiers - 1 or len(
            self.link_latency) != n_tiers - 1:
      raise ValueError(
          f"the tier profile describes {len(self.flops_per_second)} tier(s) "
          f"and {len(self.link_bandwidth)}/{len(self.link_latency)} link(s); "
          f"the tier map has {n_tiers} tiers and {n_tiers - 1} links.")
    if not all(v > 0 for v in self.flops_per_second + self.link_bandwidth):
      raise ValueError("tier FLOP/s and link bandwidths must be > 0.")
    if not all(v >= 0 for v in self.link_latency):
      raise ValueError("link latencies must be >= 0.")


def check_tier_map(tier_map: Sequence[Sequence[int]] | None,
                   granularity: int) -> tuple[int, ...]:
  """Validates a tier map and returns the tier of every segment.

  Args:
    tier_map: for each tier, the 0-based segments it holds, e.g.
      [[0], [1], [2, 3]] puts G = 4 exits on 3 tiers. None: one per tier.
    granularity: G, the number of segments.

  Returns:
    (tier of segment 0, ..., tier of segment G - 1).
  """
  if tier_map is None:
    return tuple(range(granularity))
  seen = []
  for tier, segments in enumerate(tier_map):
    if isinstance(segments, (int, np.integer)) or not len(segments):
      raise ValueError(f"tier {tier} of the tier map holds no segment list: "
                       f"{tier_map!r}; give e.g. [[0], [1], [2, 3]].")
    seen += [(int(s), tier) for s in segments]
  order = [s for s, _ in seen]
  for s in order:
    if not 0 <= s < granularity:
      raise ValueError(f"the tier map names segment {s}, but the family has "
                       f"segments 0..{granularity - 1}.")
  repeated = sorted({s for s in order if order.count(s) > 1})
  if repeated:
    raise ValueError(f"the tier map repeats segment(s) {repeated}: each "
                     "segment runs on exactly one tier.")
  skipped = sorted(set(range(granularity)) - set(order))
  if skipped:
    raise ValueError(f"the tier map skips segment(s) {skipped}: every "
                     "segment must be assigned to a tier.")
  if order != sorted(order):
    raise ValueError(f"the tier map {tier_map!r} is out of order: tiers hold "
                     "consecutive segments, shallowest first.")
  return tuple(t for _, t in seen)


@dataclasses.dataclass(frozen=True)
class Policy:
  """When a request leaves at an exit.

  confidence: exit when the exit's max softmax probability >= threshold;
  entropy: exit when the entropy (nats) of its distribution <= threshold;
  fixed: always exit at exit `index` (0-based);
  oracle: exit at the shallowest exit whose greedy token equals the last
    exit's (needs every exit, so it runs full depth: for analysis only).
  The last exit always emits.
  """

  kind: str = "confidence"
  threshold: float = 0.9
  index: int = 0

  def __post_init__(self):
    if self.kind not in POLICIES:
      raise ValueError(f"unknown exit policy {self.kind!r}; choose one of "
                       f"{POLICIES}.")
    require_number(self, "threshold", lambda v: True, "a number (not NaN)")
    index = as_index(self.index)
    if index is None or index < 0:
      raise ValueError(f"Policy.index must be an integer >= 0 (a 0-based "
                       f"exit), got {self.index!r}.")


# ----------------------------------------------------------------------------
# Pure functions of the parameters (the same maths as model.py's modules).


def _rmsnorm(x, scale, eps, dtype):
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + eps)
  return (y * scale.astype(jnp.float32)).astype(dtype)


def _block(p, cfg: ModelConfig, x, pos, valid, kc, vc):
  """One block over a window. x [B, C, D]; pos, valid [B, C]; caches
  [B, T + 1, N, H] (row T is scratch for invalid slots)."""
  dt = jnp.dtype(cfg.dtype)
  w = lambda a: a.astype(dt)
  h = _rmsnorm(x, p["attn_norm"]["scale"], cfg.norm_eps, dt)
  att = p["attn"]
  q = jnp.einsum("bcd,dnh->bcnh", h, w(att["query"]["kernel"]))
  k = jnp.einsum("bcd,dnh->bcnh", h, w(att["key"]["kernel"]))
  v = jnp.einsum("bcd,dnh->bcnh", h, w(att["value"]["kernel"]))
  q, k = rotary(q, pos, cfg.rope_theta), rotary(k, pos, cfg.rope_theta)
  bidx = jnp.arange(x.shape[0])[:, None]
  slot = jnp.where(valid, pos, kc.shape[1] - 1)
  kc = kc.at[bidx, slot].set(k.astype(kc.dtype))
  vc = vc.at[bidx, slot].set(v.astype(vc.dtype))
  scores = jnp.einsum("bcnh,btnh->bnct", q, kc.astype(dt),
                      preferred_element_type=jnp.float32) * cfg.head_dim ** -0.5
  key_pos = jnp.arange(kc.shape[1])
  allowed = (key_pos[None, None, :] <= pos[:, :, None]) & (
      key_pos[None, None, :] < kc.shape[1] - 1)
  scores = jnp.where(allowed[:, None], scores, -jnp.inf)
  probs = jax.nn.softmax(scores, axis=-1).astype(dt)
  y = jnp.einsum("bnct,btnh->bcnh", probs, vc.astype(dt))
  x = x + jnp.einsum("bcnh,nhd->bcd", y, w(att["out"]["kernel"]))
  h = _rmsnorm(x, p["mlp_norm"]["scale"], cfg.norm_eps, dt)
  mlp = p["mlp"]
  hidden = jax.nn.silu(h @ w(mlp["wi_gate"]["kernel"])) * (
      h @ w(mlp["wi_up"]["kernel"]))
  return x + hidden @ w(mlp["wo"]["kernel"]), kc, vc


class Relay:
  """Segments, tiers and jitted steps of one trained family.

  Args:
    config: the family's ModelConfig.
    params: its parameters.
    tier_map: see `check_tier_map`.
    profile: tier speeds; default `TierProfile.default`.
    window: positions per catch-up pass.
  """

  def __init__(self, config: ModelConfig, params: Any,
               tier_map: Sequence[Sequence[int]] | None = None,
               profile: TierProfile | None = None, window: int = 16):
    check_params(config, params)
    self.cfg, self.params = config, params
    self.G = config.granularity
    self.tier_of = check_tier_map(tier_map, self.G)
    self.n_tiers = max(self.tier_of) + 1
    self.profile = profile or TierProfile.default(self.n_tiers)
    self.profile.check(self.n_tiers)
    if not isinstance(window, int) or window < 1:
      raise ValueError(f"window must be a positive integer, got {window!r}.")
    self.window = window
    bounds = (0,) + tuple(config.exit_layers)
    self.layers = [range(bounds[g], bounds[g + 1]) for g in range(self.G)]
    self._segment = [jax.jit(functools.partial(self._segment_fn, g))
                     for g in range(self.G)]
    self._exit = [jax.jit(functools.partial(self._exit_fn, g))
                  for g in range(self.G)]
    self.itemsize = jnp.dtype(config.dtype).itemsize

  # -- jitted pieces ---------------------------------------------------------

  def _segment_fn(self, g, params, x, pos, valid, caches):
    """Runs segment g over a window; returns (outputs [B, C, D], caches)."""
    out = []
    for i, layer in enumerate(self.layers[g]):
      x, kc, vc = _block(params[f"blocks_{layer}"], self.cfg, x, pos, valid,
                         *caches[i])
      out.append((kc, vc))
    return x, out

  def _exit_fn(self, g, params, h):
    """Exit g's float32 logits for hidden states h [B, D]."""
    cfg = self.cfg
    h = _rmsnorm(h, params[f"exits_{g}"]["norm"]["scale"], cfg.norm_eps,
                 jnp.dtype(cfg.dtype))
    if cfg.tie_embeddings:
      w = params["embed"]["embedding"].T
    else:
      w = params[f"exits_{g}"]["unembed"]["kernel"]
    return jnp.dot(h, w.astype(h.dtype), preferred_element_type=jnp.float32)

  # -- accounting ------------------------------------------------------------

  def segment_flops(self, g: int, positions: np.ndarray) -> np.ndarray:
    """Forward FLOPs of segment g at the given 0-based positions (matmuls and
    causal attention over position + 1 keys), summed per row."""
    cfg = self.cfg
    per_token = 2 * (4 * cfg.d_model * cfg.n_heads * cfg.head_dim +
                     3 * cfg.d_model * cfg.d_ff)
    attn = 4 * cfg.n_heads * cfg.head_dim * (positions + 1)
    return len(self.layers[g]) * (per_token + attn)

  @property
  def exit_flops(self) -> int:
    return 2 * self.cfg.d_model * self.cfg.vocab_size

  # -- decoding --------------------------------------------------------------

  def new_state(self, prompts: np.ndarray, max_len: int) -> dict:
    """Empty caches for a batch of prompts [B, P] and max_len positions."""
    cfg = self.cfg
    prompts = _check_prompts(prompts, self.cfg.vocab_size)
    if max_len > cfg.max_seq_len:
      raise ValueError(
          f"prompt plus new tokens ({max_len}) exceed the model's context "
          f"max_seq_len={cfg.max_seq_len}; shorten the prompt or generate "
          "fewer tokens.")
    if prompts.min() < 0 or prompts.max() >= cfg.vocab_size:
      raise ValueError(f"prompt tokens must lie in [0, {cfg.vocab_size}).")
    # Caches always span the model's context (row max_seq_len is scratch), so
    # every decode of one batch size runs the same compiled programs.
    b, t = prompts.shape[0], cfg.max_seq_len + 1
    dt = jnp.dtype(cfg.dtype)
    kv = lambda: (jnp.zeros((b, t, cfg.n_heads, cfg.head_dim), dt),
                  jnp.zeros((b, t, cfg.n_heads, cfg.head_dim), dt))
    tokens = np.zeros((b, t), np.int32)
    tokens[:, :prompts.shape[1]] = prompts
    return {"tokens": tokens, "filled": np.zeros((self.G, b), np.int64),
            "caches": [[kv() for _ in self.layers[g]] for g in range(self.G)],
            "hidden": [jnp.zeros((b, t, cfg.d_model), dt)
                       for _ in range(self.G)], "scratch": cfg.max_seq_len}

  def _accounts(self, batch: int) -> dict:
    """Per-request totals that `advance` adds to."""
    return {"flops": np.zeros((batch, self.n_tiers)), "bytes": np.zeros(batch),
            "time": np.zeros(batch)}

  def advance(self, state: dict, g: int, upto: np.ndarray, acct: dict
              ) -> None:
    """Computes segment g for every request b at positions
    filled[g, b] .. upto[b] - 1 (segment g - 1 must cover them), in windows."""
    filled = state["filled"]
    embed = self.params["embed"]["embedding"]
    b_idx = np.arange(filled.shape[1])
    while True:
      todo = np.maximum(upto - filled[g], 0)
      if not todo.any():
        return
      c = self.window
      pos = filled[g][:, None] + np.arange(c)[None, :]
      valid = np.arange(c)[None, :] < todo[:, None]
      pos = np.where(valid, pos, state["scratch"])
      if g == 0:
        tok = jnp.asarray(state["tokens"][b_idx[:, None], pos])
        x = jnp.take(embed, tok, axis=0).astype(self.cfg.dtype) * jnp.asarray(
            self.cfg.d_model ** 0.5, self.cfg.dtype)
      else:
        x = state["hidden"][g - 1][b_idx[:, None], pos]
      out, state["caches"][g] = self._segment[g](
          self.params, x, jnp.asarray(pos, jnp.int32), jnp.asarray(valid),
          state["caches"][g])
      state["hidden"][g] = state["hidden"][g].at[b_idx[:, None], pos].set(out)
      n = valid.sum(1)
      flops = np.where(valid, self.segment_flops(g, pos), 0).sum(1)
      tier = self.tier_of[g]
      acct["flops"][:, tier] += flops
      acct["time"] += flops / self.profile.flops_per_second[tier]
      if g > 0 and self.tier_of[g - 1] != tier:
        moved = n * self.cfg.d_model * self.itemsize
        link = self.tier_of[g - 1]
        acct["bytes"] += moved
        acct["time"] += np.where(n > 0, self.profile.link_latency[link] +
                                 moved / self.profile.link_bandwidth[link], 0)
      filled[g] += n

  def decode(self, prompts: np.ndarray, new_tokens: int, policy: Policy, *,
             forced: np.ndarray | None = None) -> dict:
    """Greedy relay decoding of a batch.

    Args:
      prompts: [B, P] int tokens (one prompt length per batch).
      new_tokens: tokens to generate per request.
      policy: the exit policy.
      forced: optional [B, P + new_tokens] text; each step then consumes the
        true next token (teacher forcing) and records the emitted
        distribution's loss on it.

    Returns:
      dict: tokens [B, P + n]; exits [B, n] (0-based exit per token);
      nll [B, n] (when forced); flops [B, tiers] (decoding, prompt excluded);
      prefill_flops [B] (the first tier's pass over the prompt; deeper tiers
      fill the prompt when first reached, counted in flops); bytes [B] handed
      between tiers; recomputed [B] generated positions that exited early
      and were computed again by a deeper segment's catch-up; latency [B]
      modelled seconds for the n tokens; state (final caches).
    """
    prompts = _check_prompts(prompts, self.cfg.vocab_size)
    p = prompts.shape[1]
    if not isinstance(new_tokens, int) or new_tokens < 1:
      raise ValueError(f"new_tokens must be a positive integer, got "
                       f"{new_tokens!r}.")
    if policy.kind == "fixed" and policy.index >= self.G:
      raise ValueError(f"Policy.index={policy.index} is not an exit of this "
                       f"family (G={self.G}; valid: 0..{self.G - 1}).")
    state = self.new_state(prompts, p + new_tokens)
    b = prompts.shape[0]
    if forced is not None:
      forced = _check_prompts(forced, self.cfg.vocab_size, "forced text")
      if forced.shape != (b, p + new_tokens):
        raise ValueError(f"forced text must have shape {(b, p + new_tokens)},"
                         f" got {forced.shape}.")
    acct = self._accounts(b)
    self.advance(state, 0, np.full(b, p), acct)  # prefill on the first tier
    prefill_flops = acct["flops"][:, 0].copy()
    acct = self._accounts(b)
    exits = np.zeros((b, new_tokens), np.int64)
    nll = np.zeros((b, new_tokens))
    recomputed = np.zeros(b, np.int64)
    for step in range(new_tokens):
      t = p - 1 + step
      upto = np.full(b, t + 1)
      active = np.ones(b, bool)
      chosen = np.zeros(b, np.int64)
      emitted = np.zeros(b, np.int64)
      logp_true = np.zeros(b)
      all_greedy = []
      for g in range(self.G):
        before = state["filled"][g].copy()
        self.advance(state, g, np.where(active, upto, state["filled"][g]),
                     acct)
        moved = state["filled"][g] > before
        # Generated positions this pass caught up on, beyond the token's own
        # (a deep tier's first pass also fills the prompt: not counted here).
        recomputed += np.where(moved, np.maximum(t - np.maximum(before, p), 0),
                               0)
        h = state["hidden"][g][:, t]
        logits = np.asarray(self._exit[g](self.params, h), np.float64)
        tier = self.tier_of[g]
        acct["flops"][active, tier] += self.exit_flops
        acct["time"][active] += (self.exit_flops /
                                 self.profile.flops_per_second[tier])
        logp = logits - _logsumexp(logits)
        greedy = logits.argmax(-1)
        all_greedy.append(greedy)
        last = g == self.G - 1
        if policy.kind == "confidence":
          leave = np.exp(logp.max(-1)) >= policy.threshold
        elif policy.kind == "entropy":
          leave = -(np.exp(logp) * logp).sum(-1) <= policy.threshold
        elif policy.kind == "fixed":
          leave = np.full(b, g >= policy.index)
        else:  # oracle: decided once every exit is known
          leave = np.zeros(b, bool)
        leave = (leave | last) & active
        chosen[leave] = g
        emitted[leave] = greedy[leave]
        if forced is not None:
          logp_true[leave] = logp[leave, forced[leave, t + 1]]
        active &= ~leave
        if policy.kind == "oracle" and last:
          agree = np.stack(all_greedy) == greedy[None]  # [G, B]
          chosen = agree.argmax(0)
          emitted = greedy
        if not active.any():
          break
      exits[:, step] = chosen
      state["tokens"][:, t + 1] = (forced[:, t + 1] if forced is not None
                                   else emitted)
      nll[:, step] = -logp_true
    out = {"tokens": state["tokens"][:, :p + new_tokens].copy(),
           "exits": exits, "flops": acct["flops"],
           "prefill_flops": prefill_flops, "bytes": acct["bytes"],
           "recomputed": recomputed,
           "latency": acct["time"], "state": state}
    if forced is not None:
      out["nll"] = nll
    return out

  def catch_up(self, state: dict) -> None:
    """Brings every segment to the depth of the first (for tests/analysis)."""
    acct = self._accounts(state["filled"].shape[1])
    for g in range(1, self.G):
      self.advance(state, g, state["filled"][0], acct)


def _check_prompts(prompts, vocab_size: int, what: str = "prompts"
                   ) -> np.ndarray:
  """Prompts (or forced text) as an integer array [batch, length >= 1] of
  ids in [0, vocab_size), or a ValueError."""
  prompts = np.asarray(prompts)
  if prompts.ndim != 2 or prompts.shape[1] < 1:
    raise ValueError(f"{what} must be [batch, length >= 1], got shape "
                     f"{prompts.shape}.")
  if not np.issubdtype(prompts.dtype, np.integer):
    raise ValueError(f"{what} must be integer tokens, got dtype "
                     f"{prompts.dtype}.")
  check_tokens(prompts, vocab_size)
  return prompts


def _logsumexp(x):
  m = x.max(-1, keepdims=True)
  return m + np.log(np.exp(x - m).sum(-1, keepdims=True))


def check_params(config: ModelConfig, params: Any) -> None:
  """Raises ValueError unless `params` has the shapes `config` implies."""
  expected = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
  flat_e = {jax.tree_util.keystr(k): v.shape for k, v in
            jax.tree_util.tree_leaves_with_path(expected)}
  try:
    flat_p = {jax.tree_util.keystr(k): np.shape(v) for k, v in
              jax.tree_util.tree_leaves_with_path(params)}
  except Exception:  # pylint: disable=broad-except
    flat_p = {}
  if flat_e != flat_p:
    diff = sorted(k for k in set(flat_e) | set(flat_p)
                  if flat_e.get(k) != flat_p.get(k))[:3]
    raise ValueError(
        "the parameters are not those of this config (a checkpoint of another "
        "model?): " + "; ".join(f"{k}: have {flat_p.get(k)}, config expects "
                                f"{flat_e.get(k)}" for k in diff))


class Checkpoint(NamedTuple):
  """A run's latest checkpoint: its config, parameters and step, and the
  step the run ends at (a group's longest member's)."""

  cfg: TrainConfig
  params: Any
  step: int
  last_step: int


def load_checkpoint(workdir: str, member: int | None = None) -> Checkpoint:
  """The latest checkpoint of a training run (train.py's workdir or a
  sweep's runs/<point id>), or of member `member` of a sweep's vmapped group
  (runs/<id>+<id>..., in the order of its name)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"{workdir} holds no training run (no config.json).")
  with open(path) as f:
    saved = json.load(f)
  if "group" in saved:
    k = len(saved["group"])
    if member is None or not 0 <= member < k:
      raise ValueError(f"{workdir} holds a group of {k} runs; name one with "
                       f"member=0..{k - 1}, got {member}.")
    cfg = TrainConfig.from_dict(saved["group"][member])
    last_step = max(d["steps"] for d in saved["group"])
  elif member is not None:
    raise ValueError(f"{workdir} holds one run, not a group; member must be "
                     "None.")
  else:
    cfg = TrainConfig.from_dict(saved)
    last_step = cfg.steps
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(
      workdir, "checkpoints")))
  step = manager.latest_step()
  if step is None:
    raise ValueError(f"{workdir} has no checkpoint to load.")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))
  params = jax.tree.map(
      lambda x: np.asarray(x) if member is None else np.asarray(x)[member],
      restored["state"]["params"])
  check_params(cfg.model, params)
  return Checkpoint(cfg, params, step, last_step)


def load_family(workdir: str, member: int | None = None
                ) -> tuple[TrainConfig, Any]:
  """Config and parameters of a run's latest checkpoint (`load_checkpoint`)."""
  ckpt = load_checkpoint(workdir, member)
  return ckpt.cfg, ckpt.params


__all__ = ["Relay", "Policy", "TierProfile", "check_tier_map",
           "check_params", "load_family", "load_checkpoint", "Checkpoint",
           "POLICIES"]
