"""deeplab.atomicfile: a write replaces the file whole or leaves it as it was, and keeps a link in place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deeplab.atomicfile import atomic_path


def test_a_failed_write_leaves_the_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="exporter failed"), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("exporter failed")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and not tmp.exists()
        tmp.write_bytes(b"new")
        assert path.read_bytes() == b"old"  # not visible before the block ends
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_writing_through_a_link_replaces_its_target(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / "v1.onnx"
    target.write_bytes(b"old")
    link = tmp_path / "current.onnx"
    link.symlink_to(target)
    with atomic_path(link) as tmp:
        tmp.write_bytes(b"new")
    assert link.is_symlink() and link.resolve() == target and target.read_bytes() == b"new"


def test_a_new_file_gets_the_umasks_mode_and_a_replaced_file_keeps_its_own(tmp_path: Path) -> None:
    """Whatever mode the writer creates its temporary file with (safetensors' writer: 0600)."""
    previous = os.umask(0o022)
    try:
        new = tmp_path / "model.safetensors"
        with atomic_path(new) as tmp:
            tmp.write_bytes(b"weights")
            tmp.chmod(0o600)
        assert new.stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "shared.pt"
        kept.write_bytes(b"old")
        kept.chmod(0o640)
        with atomic_path(kept) as tmp:
            tmp.write_bytes(b"new")
            tmp.chmod(0o600)
        assert kept.read_bytes() == b"new" and kept.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(previous)
