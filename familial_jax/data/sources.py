"""Text sources: the default offline corpus, local files, TFDS datasets.

Every source yields a `Corpus`: named documents (bytes) in a fixed order plus
a SHA-256 content hash over names and contents, recorded in every result.

Default corpus: the Linux kernel documentation (reStructuredText and plain
text, English only: the translations/ tree is left out; 25.4 MB in 4,762
documents, sha256 5d1712d0...) as packaged
by Debian in `linux-doc-6.1` (pinned: 6.1.192-2 on Debian 12). It comes from
a package registry (`apt-get install linux-doc-6.1`), so it is on a fresh
machine with no download at run time; the hash tells apart other versions.
"""

from __future__ import annotations

import dataclasses
import glob as glob_lib
import gzip
import hashlib
import os

DEFAULT_CORPUS_DIRS = ("/usr/share/doc/linux-doc-6.1/Documentation",)
DEFAULT_CORPUS_PACKAGE = "linux-doc-6.1"
DEFAULT_CORPUS_VERSION = "6.1.192-2"
_TEXT_SUFFIXES = (".rst", ".txt")


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Documents in a fixed order.

  Attributes:
    name: where it came from ("default:linux-doc-6.1", "files:<glob>", ...).
    names: one name per document (paths, or TFDS indices).
    documents: the raw bytes of each document.
  """

  name: str
  names: tuple[str, ...]
  documents: tuple[bytes, ...]

  @property
  def sha256(self) -> str:
    """Content hash over every (name, document) pair, in order."""
    h = hashlib.sha256()
    for n, d in zip(self.names, self.documents):
      h.update(n.encode())
      h.update(b"\0")
      h.update(hashlib.sha256(d).digest())
    return h.hexdigest()

  @property
  def n_bytes(self) -> int:
    return sum(len(d) for d in self.documents)

  def describe(self) -> dict:
    return {"name": self.name, "documents": len(self.documents),
            "bytes": self.n_bytes, "sha256": self.sha256}


def _read(path: str) -> bytes:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    return f.read()


def _from_paths(name: str, paths, root: str) -> Corpus:
  names, docs = [], []
  for p in sorted(paths):
    data = _read(p)
    if data.strip():
      names.append(os.path.relpath(p, root))
      docs.append(data)
  return Corpus(name, tuple(names), tuple(docs))


def default_corpus(root: str | None = None) -> Corpus:
  """The Linux kernel documentation from Debian's linux-doc package.

  Args:
    root: the Documentation directory; default: the Debian install path.

  Raises:
    FileNotFoundError: the package is not installed, with the command that
      installs it.
  """
  candidates = (root,) if root else DEFAULT_CORPUS_DIRS
  for directory in candidates:
    if directory and os.path.isdir(directory):
      paths = [p for p in glob_lib.glob(os.path.join(directory, "**", "*"),
                                        recursive=True)
               if p.removesuffix(".gz").endswith(_TEXT_SUFFIXES)
               and "/translations/" not in p]  # English only
      if paths:
        return _from_paths(f"default:{DEFAULT_CORPUS_PACKAGE}", paths,
                           directory)
  raise FileNotFoundError(
      f"the default corpus (Debian package {DEFAULT_CORPUS_PACKAGE}, "
      f"{DEFAULT_CORPUS_VERSION}) is not installed at {candidates[0]}. "
      f"Install it with `sudo apt-get install {DEFAULT_CORPUS_PACKAGE}`, or "
      "train on your own text with a files source (--config.data.source="
      "files --config.data.path='texts/*.txt').")


def files_corpus(pattern: str) -> Corpus:
  """Every file matching a glob (recursive `**` allowed), one document each.

  Raises:
    ValueError: the glob matches no file, or only empty files.
  """
  paths = [p for p in glob_lib.glob(os.path.expanduser(pattern),
                                    recursive=True) if os.path.isfile(p)]
  if not paths:
    raise ValueError(f"the glob {pattern!r} matches no file.")
  corpus = _from_paths(f"files:{pattern}", paths,
                       os.path.dirname(os.path.commonprefix(paths)) or ".")
  if not corpus.documents:
    raise ValueError(f"every file matching {pattern!r} is empty.")
  return corpus


def tfds_corpus(name: str, split: str = "train", data_dir: str | None = None,
                text_key: str = "text", max_documents: int | None = None
                ) -> Corpus:
  """Documents from a TFDS dataset through `tfds.data_source` (ArrayRecord).

  Args:
    name: TFDS name, e.g. "lm1b" or "wikipedia/20230601.en".
    split: TFDS split.
    data_dir: where the prepared dataset lives (local or gs://).
    text_key: feature holding the text.
    max_documents: read at most this many records.
  """
  import tensorflow_datasets as tfds  # heavy import: only when asked for
  source = tfds.data_source(name, split=split, data_dir=data_dir)
  n = len(source) if max_documents is None else min(len(source), max_documents)
  names, docs = [], []
  for i in range(n):
    record = source[i]
    if text_key not in record:
      raise ValueError(f"TFDS {name!r} records have no {text_key!r} feature; "
                       f"they have {sorted(record)}.")
    text = record[text_key]
    text = text if isinstance(text, bytes) else str(text).encode()
    if text.strip():
      names.append(f"{split}/{i}")
      docs.append(text)
  if not docs:
    raise ValueError(f"TFDS {name!r} split {split!r} holds no text.")
  return Corpus(f"tfds:{name}:{split}", tuple(names), tuple(docs))
