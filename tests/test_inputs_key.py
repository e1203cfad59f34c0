"""What DVC and resumable runs key on: inputs_key (names + bytes, wherever the project lies), reproducible checkpoints."""
from __future__ import annotations

import pytest

from vidmem.common import inputs_key


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


def test_saved_checkpoints_are_byte_reproducible(tmp_path):
    """Same weights, same bytes, whatever the file is called (DVC hashes checkpoints to decide what reruns)."""
    import torch

    from vidmem.common import save_torch

    state = {"state_dict": torch.nn.Linear(4, 3).state_dict(), "epoch": 7}
    save_torch(state, tmp_path / "a.pt")
    (tmp_path / "other").mkdir()
    save_torch(state, tmp_path / "other" / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "other" / "b.pt").read_bytes()
    assert not list(tmp_path.rglob("*.tmp"))
    assert torch.load(tmp_path / "a.pt", weights_only=False)["epoch"] == 7
