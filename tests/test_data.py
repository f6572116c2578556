"""Data sources and the grain pipeline."""

import os
import threading

import numpy as np
import pytest

from familial_jax import data
from familial_jax.data import pipeline, sources

DOCS = "/usr/share/doc/linux-doc-6.1/Documentation"
needs_corpus = pytest.mark.skipif(
    not os.path.isdir(DOCS),
    reason="default corpus absent: apt-get install linux-doc-6.1")


@needs_corpus
def test_default_corpus_is_real_pinned_text():
  corpus = data.default_corpus()
  info = corpus.describe()
  print(info)
  assert info["documents"] > 4000 and info["bytes"] > 20e6
  assert all("translations/" not in n for n in corpus.names)
  train, val = data.token_streams(corpus, 0.02)
  # English text: mostly printable ASCII, spaces and 'e' the most common.
  counts = np.bincount(train, minlength=256)
  assert counts[ord(" ")] == counts.max()
  assert 3.0 < data.unigram_entropy(train) < 5.0
  assert len(val) > 100_000


def test_files_source_reads_real_files(tmp_path):
  texts = {"a.txt": "The quick brown fox.\n" * 50, "sub/b.txt": "Lorem ipsum " * 80,
           "c.txt": "Hello, world!\n" * 40}
  for name, text in texts.items():
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(text)
  (tmp_path / "empty.txt").write_text("")
  corpus = data.files_corpus(str(tmp_path / "**" / "*.txt"))
  assert sorted(corpus.names) == ["a.txt", "c.txt", "sub/b.txt"]
  assert corpus.n_bytes == sum(len(t) for t in texts.values())
  assert corpus.documents[corpus.names.index("a.txt")] == texts["a.txt"].encode()
  # The hash depends on the content.
  (tmp_path / "c.txt").write_text("Hello, world?\n" * 40)
  assert data.files_corpus(str(tmp_path / "**" / "*.txt")).sha256 != corpus.sha256


def test_empty_glob_and_empty_files_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="matches no file"):
    data.files_corpus(str(tmp_path / "*.txt"))
  (tmp_path / "e.txt").write_text("  \n")
  with pytest.raises(ValueError, match="is empty"):
    data.files_corpus(str(tmp_path / "*.txt"))


def test_missing_default_corpus_says_how_to_install(tmp_path):
  with pytest.raises(FileNotFoundError, match="apt-get install linux-doc"):
    data.default_corpus(str(tmp_path / "nowhere"))


def test_split_by_document_is_fixed():
  names = [f"doc{i}" for i in range(2000)]
  val = [n for n in names if pipeline.is_validation(n, 0.1)]
  assert 150 < len(val) < 250
  assert val == [n for n in names if pipeline.is_validation(n, 0.1)]
  corpus = sources.Corpus("t", tuple(names), tuple(b"x" * 10 for _ in names))
  train, held = data.token_streams(corpus, 0.1)
  assert len(held) == 11 * len(val) and len(train) == 11 * (2000 - len(val))


def test_windows_batches_and_checkpointable_order():
  stream = np.arange(1000, dtype=np.int64) % 256
  ds = data.train_dataset(stream.astype(np.uint8), 9, 4, seed=3)
  it = iter(ds)
  first = [next(it) for _ in range(3)]
  assert first[0].shape == (4, 10) and first[0].dtype == np.int32
  for b in first:  # windows are consecutive tokens, stride 9
    assert np.all((np.diff(b, axis=1) % 256) == 1)
    assert set(b[:, 0]) <= {(9 * i) % 256 for i in range(111)}
  state = it.get_state()
  after = [next(it) for _ in range(20)]  # crosses an epoch (111 windows)
  it2 = iter(data.train_dataset(stream.astype(np.uint8), 9, 4, seed=3))
  it2.set_state(state)
  for a, b in zip(after, [next(it2) for _ in range(20)]):
    np.testing.assert_array_equal(a, b)
  other = next(iter(data.train_dataset(stream.astype(np.uint8), 9, 4, seed=4)))
  assert not np.array_equal(other, first[0])


def test_every_epoch_draws_windows_without_replacement():
  stream = np.arange(1, 1001, dtype=np.int64)  # token = position + 1
  it = iter(data.train_dataset(stream, 9, 4, seed=0))
  # 111 windows, 27 batches per epoch; the 3 left over differ per epoch.
  epochs = [np.concatenate([next(it) for _ in range(27)]) for _ in range(2)]
  starts = []
  for e in epochs:
    np.testing.assert_array_equal(e, stream[(e[:, :1] - 1) + np.arange(10)])
    first = e[:, 0] - 1
    assert np.all(first % 9 == 0) and len(set(first)) == 108
    starts.append(set(first // 9))
  assert len(starts[0] | starts[1]) > 108  # a new permutation each epoch


def test_per_process_rows_partition_the_global_batch():
  stream = (np.arange(5000) % 256).astype(np.uint8)
  full = next(iter(data.train_dataset(stream, 16, 8, seed=0)))
  parts = [next(iter(data.train_dataset(stream, 16, 8, 0, p, 2)))
           for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), full)


def test_entropies_match_hand_computation():
  stream = np.array([1, 2, 1, 2, 1, 2, 3, 3], np.uint8)
  p = np.array([3, 3, 2]) / 8
  assert data.unigram_entropy(stream) == pytest.approx(-(p * np.log(p)).sum())
  # pairs: 12 x3, 21 x2, 23, 33: H(next | prev=1) = 0, prev=2: {1: 2/3, 3: 1/3}
  h2 = 3 / 7 * -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))
  assert data.bigram_entropy(stream) == pytest.approx(h2)


def test_tfds_source_under_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  try:
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
      corpus = data.tfds_corpus("imdb_reviews", "train", text_key="text")
  except ImportError as e:  # mock_data may need TensorFlow to build examples
    pytest.skip(f"tfds mock_data unavailable here: {e}")
  assert len(corpus.documents) == 12
  assert corpus.name == "tfds:imdb_reviews:train"
  assert all(isinstance(d, bytes) and d for d in corpus.documents)


def test_training_iterator_reads_in_the_callers_thread():
  # grain's default read options start a 16-thread pool that competes with
  # the training loop (benchmarks/host_overhead.py); the batches are cheap
  # enough to draw where they are consumed, and the trainer prefetches.
  stream = (np.arange(5000) % 256).astype(np.uint8)
  before = threading.active_count()
  it = iter(data.train_dataset(stream, 9, 4, seed=0))
  for _ in range(50):
    next(it)
  assert threading.active_count() == before


def test_validation_windows_spread_over_the_held_out_stream():
  """'spread' takes window i * n // k of the n windows, 'first' the first k;
  on the default corpus the first 128 windows of 64 bytes (cpu_large's
  validation set) lie in 2 of the held-out documents and are far easier text
  (bigram entropy 1.88 nats) than the stream, which 'spread' matches."""
  stream = np.arange(1001)  # 1000 // 10 = 100 windows
  spread = pipeline.validation_windows(stream, 10, 8)
  np.testing.assert_array_equal(spread[:, 0],
                                [i * 100 // 8 * 10 for i in range(8)])
  np.testing.assert_array_equal(spread[3], np.arange(370, 381))
  first = pipeline.validation_windows(stream, 10, 8, "first")
  np.testing.assert_array_equal(first[:, 0], np.arange(0, 80, 10))
  assert len(pipeline.validation_windows(stream, 10, 500)) == 100
  assert len(pipeline.validation_windows(stream, 10, 0)) == 100  # 0: all
  with pytest.raises(ValueError, match="sample must be one of"):
    pipeline.validation_windows(stream, 10, 8, "last")
  _, val = data.token_streams(data.default_corpus(), 0.02)
  text = lambda w: w[:, :-1].reshape(-1)
  first = pipeline.validation_windows(val, 64, 128, "first")
  spread = pipeline.validation_windows(val, 64, 128)
  # The held-out document each window starts in.
  ends = np.flatnonzero(val == pipeline.EOD)
  n = (len(val) - 1) // 64
  docs = lambda ids: len(np.unique(np.searchsorted(ends, ids * 64)))
  assert docs(np.arange(128)) == 2 and (text(first) == pipeline.EOD).sum() == 1
  assert docs(np.arange(128) * n // 128) == 54 and len(ends) == 84  # by bytes
  whole = data.bigram_entropy(val)
  print("bigram entropy: first", data.bigram_entropy(text(first)), "spread",
        data.bigram_entropy(text(spread)), "stream", whole)
  assert data.bigram_entropy(text(first)) < 2.0 < whole
  assert abs(data.bigram_entropy(text(spread)) - whole) < 0.25
