"""Tokenising, splitting, packing and batching with grain.

- Tokenizer: bytes (UTF-8), vocabulary 256; documents are joined with the
  byte 0 as end-of-document marker (text corpora hold no NUL bytes).
- Split: by document, fixed: a document goes to validation when the first
  8 bytes of sha256(name) read as an integer fall below val_fraction of the
  range, so the split depends only on the document's name.
- Packing: the train documents form one token stream cut into windows of
  seq_len + 1 tokens with stride seq_len (inputs = w[:-1], targets = w[1:]).
- Training order: epoch e is a permutation of the windows drawn from
  (seed, e); batch j of epoch e is windows j*B .. (j+1)*B - 1 of it (the last
  len % B windows of each permutation are skipped, others next epoch).
  A grain `MapDataset` over batch indices gathers each batch from the stream
  with one numpy fancy index (0.11 ms for 32 x 129 tokens, against 1.5 ms
  shuffling and batching window by window in grain); its iterator state is a
  small dict saved with every checkpoint, so a resumed run sees the same
  batches.
- Validation: a fixed held-out token set of `eval_windows` windows of the
  validation stream, spread evenly over it ("spread": window i*n//k of n, so
  every part of the held-out text counts) or its first ones ("first": what
  configs written before the choice existed used; the first windows can be
  one or two documents, unlike the rest).
- Multi-host: process p of P takes the p-th contiguous block of rows of every
  global batch (the rows its devices hold in the batch sharding).
"""

from __future__ import annotations

import dataclasses
import hashlib

import grain
import numpy as np

from familial_jax.config import EVAL_SAMPLES
from familial_jax.data.sources import Corpus

EOD = 0

# No grain read threads: a batch is one numpy fancy index (microseconds), and
# the trainer's prefetch thread already overlaps it with the device's work.
# grain's default pool (16 threads reading 500 batches ahead) competes with
# the training loop for the GIL and the cores: with it a step of a tiny model
# took 1.9-2.9x the time (1.0-1.6 ms of loop overhead on top of the jitted
# step, against 0.18-0.34 ms without; benchmarks/host_overhead.py, two runs on
# a 2-core CPU).
READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
  """UTF-8 bytes as tokens; id 0 (NUL) marks the end of a document."""

  vocab_size: int = 256

  def encode(self, data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint8)

  def decode(self, tokens) -> str:
    return bytes(np.asarray(tokens, np.uint8)).decode("utf-8", "replace")

  def spec(self) -> dict:
    return {"type": "bytes", "vocab_size": self.vocab_size, "eod": EOD}


def is_validation(name: str, val_fraction: float) -> bool:
  """Whether a document belongs to the validation split (by name only)."""
  h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
  return h < val_fraction * 2 ** 64


def token_streams(corpus: Corpus, val_fraction: float,
                  tokenizer: ByteTokenizer = ByteTokenizer()
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(train, validation) token streams, documents ending with EOD."""
  if not 0 < val_fraction < 1:
    raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
  parts = {True: [], False: []}
  eod = np.array([EOD], np.uint8)
  for name, doc in zip(corpus.names, corpus.documents):
    parts[is_validation(name, val_fraction)] += [tokenizer.encode(doc), eod]
  if not parts[False] or not parts[True]:
    raise ValueError(
        f"corpus {corpus.name!r} has {len(corpus.documents)} document(s): too "
        "few to split by document into train and validation; add documents "
        "or change val_fraction.")
  return np.concatenate(parts[False]), np.concatenate(parts[True])


class Windows:
  """Fixed windows of seq_len + 1 tokens over a stream, stride seq_len."""

  def __init__(self, stream: np.ndarray, seq_len: int):
    self._stream, self._seq_len = stream, seq_len
    self._offsets = np.arange(seq_len + 1)
    self._n = (len(stream) - 1) // seq_len

  def __len__(self):
    return self._n

  def gather(self, ids: np.ndarray) -> np.ndarray:
    """Windows `ids` as one int32 array [len(ids), seq_len + 1]."""
    starts = np.asarray(ids)[:, None] * self._seq_len
    return self._stream[starts + self._offsets].astype(np.int32)


class _ShuffledBatches:
  """Batch index -> [rows, seq_len + 1] int32 windows (see the module doc)."""

  def __init__(self, windows: Windows, global_batch: int, seed: int,
               rows: slice):
    self._windows, self._batch = windows, global_batch
    self._seed, self._rows = seed, rows
    self._per_epoch = len(windows) // global_batch
    self._epoch, self._perm = -1, None

  def __call__(self, index: int) -> np.ndarray:
    epoch, j = divmod(int(index), self._per_epoch)
    if epoch != self._epoch:
      self._perm = np.random.default_rng([self._seed, epoch]).permutation(
          len(self._windows))
      self._epoch = epoch
    batch = self._perm[j * self._batch:(j + 1) * self._batch]
    return self._windows.gather(batch[self._rows])


def train_dataset(stream: np.ndarray, seq_len: int, global_batch: int,
                  seed: int, process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """Infinite, shuffled, batched training windows for this process.

  Yields int32 arrays [global_batch // process_count, seq_len + 1].
  """
  windows = Windows(stream, seq_len)
  if len(windows) < global_batch:
    raise ValueError(
        f"the training stream has {len(windows)} windows of {seq_len + 1} "
        f"tokens, fewer than one batch of {global_batch}; use more text, a "
        "shorter sequence or a smaller batch.")
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by the "
                     f"{process_count} processes.")
  rows = global_batch // process_count
  gather = _ShuffledBatches(
      windows, global_batch, seed,
      slice(process_index * rows, (process_index + 1) * rows))
  return grain.MapDataset.range(2 ** 62).map(gather).to_iter_dataset(
      READ_OPTIONS)


def validation_windows(stream: np.ndarray, seq_len: int, eval_windows: int,
                       sample: str = "spread") -> np.ndarray:
  """The fixed held-out set, [k, T + 1]: k = min(eval_windows, n) of the
  stream's n windows (all n for eval_windows=0), window i * n // k for i < k
  ("spread") or the first k ("first")."""
  if sample not in EVAL_SAMPLES:
    raise ValueError(f"sample must be one of {EVAL_SAMPLES}, got {sample!r}.")
  windows = Windows(stream, seq_len)
  n = len(windows)
  if n < 1:
    raise ValueError("the validation stream is shorter than one window.")
  k = min(eval_windows, n) if eval_windows else n
  ids = np.arange(k) * n // k if sample == "spread" else np.arange(k)
  return windows.gather(ids)


def unigram_entropy(stream: np.ndarray, vocab_size: int = 256) -> float:
  """Entropy in nats/token of the stream's unigram distribution."""
  counts = np.bincount(stream, minlength=vocab_size).astype(np.float64)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def bigram_entropy(stream: np.ndarray, vocab_size: int = 256) -> float:
  """Conditional entropy H(x_t | x_{t-1}) in nats/token of the stream: the
  loss of the best model that sees only the previous token."""
  pairs = stream[:-1].astype(np.int64) * vocab_size + stream[1:]
  joint = np.bincount(pairs, minlength=vocab_size ** 2).astype(np.float64)
  joint = joint.reshape(vocab_size, vocab_size) / joint.sum()
  prev = joint.sum(1, keepdims=True)
  nz = joint > 0
  return float(-(joint[nz] * np.log((joint / np.where(prev > 0, prev, 1))[nz]
                                    )).sum())
