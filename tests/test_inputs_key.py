"""The fingerprint a resumable run or a feature store keys on: names + bytes, independent of where the project lies."""
from __future__ import annotations

import pytest

from vidmem.training import inputs_key


def _tree(root):
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("x = 1\n")
    (root / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    (root / "b.py").write_text("y = 2\n")
    return root


def test_same_files_in_two_places_give_one_key(tmp_path):
    one, two = _tree(tmp_path / "one"), _tree(tmp_path / "two")
    assert inputs_key(["pkg", "b.py"], root=one) == inputs_key(["pkg", "b.py"], root=two)
    (two / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\1")  # caches do not count
    assert inputs_key(["pkg", "b.py"], root=one) == inputs_key(["pkg", "b.py"], root=two)


def test_key_follows_bytes_names_and_extra(tmp_path):
    root = _tree(tmp_path / "p")
    key = inputs_key(["pkg", "b.py"], root=root)
    assert inputs_key(["pkg", "b.py"], root=root, extra=1) != key
    (root / "pkg" / "a.py").write_text("x = 3\n")
    changed = inputs_key(["pkg", "b.py"], root=root)
    assert changed != key
    (root / "pkg" / "a.py").rename(root / "pkg" / "c.py")
    assert inputs_key(["pkg", "b.py"], root=root) != changed


def test_missing_input_is_an_error_not_an_empty_hash(tmp_path):
    root = _tree(tmp_path / "p")
    with pytest.raises(FileNotFoundError, match="missing"):
        inputs_key(["pkg", "nope.py"], root=root)
