r"""Training-step speed: familial_jax against a plain Flax GPT, in one run.

On whatever accelerator is present, measures
  1. the bf16 matmul peak (an 8192^3 product; 2048^3 on CPU),
  2. tokens/s and model FLOP utilisation of
     (a) "reference": a straightforward Flax GPT written below (Flax's default
         multi-head attention, which materialises the T x T scores, and full
         float32 logits for every exit, then optax cross-entropy), and
     (b) "familial_jax": `train.build`'s step (cuDNN attention on GPU, chunked
         exit losses with a custom VJP),
     at d_model 768, 12 layers, 12 heads, vocabulary 50304, length 1024,
     batch 16, for G = 1 and G = 4 (familial_jax also with bf16 logits in
     the exit loss, `loss_logits_dtype`); and familial_jax at d_model 1024,
     24 layers, G = 4 under each rematerialisation policy;
and prints the ratios. Both use bf16 compute with float32 master weights,
AdamW and a donated state, and the same model FLOPs per token: every exit
counted, causal attention counted as half the score matrix, training =
3 x forward (familial_jax/flops.py); the reference's GELU MLP of width 4d has
the FLOPs of our SwiGLU of width 8d/3.

  python benchmarks/train_step.py --output=benchmarks/results/train_step_h100.json
  python benchmarks/train_step.py --small   # a quick CPU smoke run
"""

import datetime
import importlib.metadata
import json
import platform
import time

from absl import app
from absl import flags
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from familial_jax import flops
from familial_jax import losses
from familial_jax import sharding
from familial_jax import train
from familial_jax.config import ModelConfig, TrainConfig

_SMALL = flags.DEFINE_bool("small", False, "Tiny shapes (CPU smoke run).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per configuration.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON record of the run.")
_ONLY = flags.DEFINE_list("only", [], "Run only these configuration names.")

# Dense bf16 peak of the chip (datasheet, without sparsity), TFLOP/s.
DATASHEET_BF16_TFLOPS = {"H100 80GB HBM3": 989.4, "H100 SXM": 989.4,
                         "H100 PCIe": 756.0, "H100 NVL": 835.0,
                         "H200": 989.4, "A100": 312.0}


def datasheet_peak(device) -> float | None:
  kind = device.device_kind
  for name, tflops in DATASHEET_BF16_TFLOPS.items():
    if name in kind:
      return tflops * 1e12
  return None


def matmul_peak(n: int, reps: int = 10) -> float:
  """Measured bf16 matmul FLOP/s of an n x n x n product."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  f(a, b).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    c = f(a, b)
  c.block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - t)


# ----------------------------------------------------------------------------
# (a) The reference: a plain Flax GPT with G exits and full logits per exit.


class RefBlock(nn.Module):
  d: int
  heads: int
  dtype: jnp.dtype = jnp.bfloat16

  @nn.compact
  def __call__(self, x, mask):
    h = nn.LayerNorm(dtype=self.dtype)(x)
    x = x + nn.MultiHeadDotProductAttention(
        num_heads=self.heads, dtype=self.dtype, use_bias=False)(h, mask=mask)
    h = nn.LayerNorm(dtype=self.dtype)(x)
    h = nn.Dense(4 * self.d, dtype=self.dtype, use_bias=False)(h)
    return x + nn.Dense(self.d, dtype=self.dtype, use_bias=False)(nn.gelu(h))


class RefGPT(nn.Module):
  vocab: int
  d: int
  layers: int
  heads: int
  exits: tuple[int, ...]
  max_len: int

  @nn.compact
  def __call__(self, tokens):
    embed = nn.Embed(self.vocab, self.d, dtype=jnp.bfloat16)
    pos = self.param("pos", nn.initializers.normal(0.02),
                     (self.max_len, self.d))
    x = embed(tokens) + pos[:tokens.shape[1]].astype(jnp.bfloat16)
    mask = nn.make_causal_mask(tokens)
    logits = []
    for layer in range(1, self.layers + 1):
      x = RefBlock(self.d, self.heads)(x, mask)
      if layer in self.exits:
        h = nn.LayerNorm(dtype=jnp.bfloat16)(x)
        logits.append(embed.attend(h).astype(jnp.float32))
    return logits


def reference_step(cfg: ModelConfig, batch_size: int, seq_len: int):
  model = RefGPT(cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads,
                 cfg.exit_layers, seq_len)
  tx = optax.adamw(1e-4, weight_decay=0.1)
  params = model.init(jax.random.PRNGKey(0),
                      jnp.zeros((1, seq_len), jnp.int32))["params"]
  state = (params, tx.init(params))

  def step(state, batch):
    params, opt_state = state

    def loss_fn(p):
      logits = model.apply({"params": p}, batch[:, :-1])
      return sum(optax.softmax_cross_entropy_with_integer_labels(
          l, batch[:, 1:]).mean() for l in logits) / len(logits)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  return jax.jit(step, donate_argnums=0), state


def familial_step(cfg: ModelConfig, batch_size: int, seq_len: int,
                  loss_chunk: int = 0, logits_dtype: str = "float32"):
  tcfg = TrainConfig(model=cfg, seq_len=seq_len, batch_size=batch_size,
                     steps=1000, warmup_steps=10, mesh_shape=(1, 1, 1),
                     loss_chunk=loss_chunk, loss_logits_dtype=logits_dtype)
  trainer = train.build(tcfg, sharding.make_mesh((1, 1, 1)))
  state = trainer.init(jax.random.PRNGKey(0))
  schedule = jnp.asarray(train.schedule_array(tcfg))
  return (lambda state, batch: trainer.step(state, batch, schedule)), state


def time_steps(step, state, batch, steps: int) -> tuple[float, float]:
  """(seconds per step, compile + first step seconds)."""
  t = time.perf_counter()
  state, out = step(state, batch)
  jax.block_until_ready(out)
  first = time.perf_counter() - t
  state, out = step(state, batch)  # one more warm-up
  jax.block_until_ready(out)
  t = time.perf_counter()
  for _ in range(steps):
    state, out = step(state, batch)
  jax.block_until_ready((state, out))
  return (time.perf_counter() - t) / steps, first


def main(argv):
  del argv
  device = jax.devices()[0]
  gpu = device.platform == "gpu"
  small = _SMALL.value or device.platform == "cpu"
  if small:
    vocab, seq_len, batch = 512, 128, 4
    shapes = {"d768": (128, 4, 4), "d1024": (128, 4, 4)}
  else:
    vocab, seq_len, batch = 50304, 1024, 16
    shapes = {"d768": (768, 12, 12), "d1024": (1024, 24, 16)}
  attention = "cudnn" if gpu else "xla"

  def model_cfg(name, g, remat="none"):
    d, layers, heads = shapes[name]
    return ModelConfig(vocab_size=vocab, d_model=d, n_layers=layers,
                       n_heads=heads, d_ff=d * 8 // 3, max_seq_len=seq_len,
                       dtype="bfloat16", attention=attention,
                       remat=remat).with_uniform_exits(g)

  # (implementation, shape, G, remat, loss chunk in positions (0 = auto),
  # exit-loss logits dtype), most wanted first: the JSON record is rewritten
  # after every run, so a run cut short keeps what it measured.
  f32, bf16 = "float32", "bfloat16"
  runs = [("reference", "d768", 4, "none", 0, f32),
          ("familial_jax", "d768", 4, "none", 0, f32),
          ("familial_jax", "d768", 4, "none", 0, bf16),
          ("familial_jax", "d1024", 4, "none", 0, bf16),
          ("familial_jax", "d1024", 4, "dots", 0, bf16),
          ("familial_jax", "d1024", 4, "none", 0, f32),
          ("familial_jax", "d1024", 4, "block", 0, bf16),
          ("reference", "d768", 1, "none", 0, f32),
          ("familial_jax", "d768", 1, "none", 0, f32),
          ("familial_jax", "d768", 1, "none", 0, bf16)]
  peak = matmul_peak(2048 if small else 8192)
  sheet = datasheet_peak(device)
  print(f"device: {device.device_kind} ({device.platform}); jax "
        f"{jax.__version__}; measured bf16 matmul peak {peak / 1e12:.1f} "
        f"TFLOP/s; datasheet {sheet / 1e12 if sheet else float('nan'):.1f}")
  batch_tokens = jax.random.randint(jax.random.PRNGKey(3),
                                    (batch, seq_len + 1), 0, vocab, jnp.int32)
  rows = []
  for impl, name, g, remat, chunk, logits in runs:
    label = (f"{impl}-{name}-G{g}" +
             (f"-remat_{remat}" if name == "d1024" else "") +
             (f"-chunk{chunk}" if chunk else "") +
             ("-bf16logits" if logits == bf16 else ""))
    if _ONLY.value and label not in _ONLY.value:
      continue
    cfg = model_cfg(name, g, remat)
    try:
      if impl == "reference":
        step, state = reference_step(cfg, batch, seq_len)
      else:
        step, state = familial_step(cfg, batch, seq_len, chunk, logits)
      seconds, first = time_steps(step, state, batch_tokens, _STEPS.value)
    except Exception as e:  # pylint: disable=broad-except
      print(f"{label}: FAILED {type(e).__name__}: {str(e)[:300]}")
      rows.append({"name": label, "error": f"{type(e).__name__}: {e}"[:500]})
      continue
    del step, state
    fpt = flops.flops_per_token(cfg, seq_len).train
    tok_s = batch * seq_len / seconds
    row = {"name": label, "impl": impl, "shape": name, "G": g, "remat": remat,
           "loss_chunk": chunk or losses.chunk_size(batch, seq_len, vocab),
           "loss_logits_dtype": logits if impl == "familial_jax" else None,
           "d_model": cfg.d_model, "layers": cfg.n_layers,
           "train_flops_per_token": fpt, "seconds_per_step": seconds,
           "compile_seconds": first, "tokens_per_second": tok_s,
           "model_flops_per_second": fpt * tok_s,
           "mfu_vs_measured_peak": fpt * tok_s / peak,
           "mfu_vs_datasheet": fpt * tok_s / sheet if sheet else None}
    rows.append(row)
    print(f"{label:<46} {seconds * 1e3:8.2f} ms/step {tok_s:>11,.0f} tok/s "
          f"{fpt * tok_s / 1e12:7.1f} TFLOP/s  MFU {row['mfu_vs_measured_peak']:.1%}"
          f" of measured peak" + (f", {row['mfu_vs_datasheet']:.1%} of datasheet"
                                  if sheet else "") +
          f"  (compile+first {first:.1f} s)")
    _summarise(rows, device, peak, sheet, vocab, seq_len, batch, shapes,
               final=False)
  _summarise(rows, device, peak, sheet, vocab, seq_len, batch, shapes,
             final=True)


def _summarise(rows, device, peak, sheet, vocab, seq_len, batch, shapes,
               final):
  """Ratios, printed at the end; the JSON record rewritten after every run so
  that a run cut short keeps what it measured."""
  by = {r["name"]: r for r in rows if "error" not in r}
  ratios = {}
  for g in (1, 4):
    a = by.get(f"reference-d768-G{g}")
    b = max((r for n, r in by.items() if n.startswith(f"familial_jax-d768-G{g}")),
            key=lambda r: r["tokens_per_second"], default=None)
    if a and b:
      ratios[f"d768_G{g}_best_familial"] = b["name"]
      ratios[f"d768_G{g}_speedup"] = (b["tokens_per_second"] /
                                      a["tokens_per_second"])
  big = [r for n, r in by.items() if n.startswith("familial_jax-d1024")]
  if big:
    best = max(big, key=lambda r: r["tokens_per_second"])
    ratios["d1024_G4_best"] = best["name"]
    ratios["d1024_G4_best_remat"] = best["remat"]
    ratios["d1024_G4_mfu_vs_measured_peak"] = best["mfu_vs_measured_peak"]
  if final:
    print("ratios:", json.dumps(ratios, indent=1))
  if _OUTPUT.value:
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "device": device.device_kind, "platform": device.platform,
        "versions": {"python": platform.python_version(),
                     "jax": jax.__version__,
                     "jaxlib": importlib.metadata.version("jaxlib"),
                     "flax": flax.__version__, "optax": optax.__version__},
        "shapes": {"vocab": vocab, "seq_len": seq_len, "batch": batch,
                   **{k: dict(zip(("d_model", "layers", "heads"), v))
                      for k, v in shapes.items()}},
        "measured_bf16_matmul_peak": peak, "datasheet_bf16_peak": sheet,
        "steps_timed": _STEPS.value, "complete": final, "runs": rows,
        "ratios": ratios}
    with open(_OUTPUT.value, "w") as f:
      json.dump(record, f, indent=1)
    if final:
      print("wrote", _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
