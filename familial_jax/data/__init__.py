"""Data: text sources and grain pipelines (see sources.py, pipeline.py)."""

from familial_jax.data.pipeline import (ByteTokenizer, bigram_entropy,
                                        token_streams,
                                        train_dataset, unigram_entropy,
                                        validation_windows)
from familial_jax.data.sources import (Corpus, default_corpus, files_corpus,
                                       tfds_corpus)
