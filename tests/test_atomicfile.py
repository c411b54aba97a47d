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


def test_files_replaced_together_survive_a_kill_between_their_renames(tmp_path: Path, monkeypatch) -> None:
    """A model folder's three files: the renames are recorded first, so a process killed after the first one
    leaves a record that the next reader completes; it never sees the new card beside the old weights."""
    import os

    from deeplab import atomicfile
    from deeplab.atomicfile import atomic_files, finish_commit

    names = ["model.safetensors", "config.json", "README.md"]
    for name in names:
        (tmp_path / name).write_text(f"old {name}")
    with pytest.raises(RuntimeError), atomic_files([tmp_path / n for n in names]) as tmps:
        for tmp, name in zip(tmps, names):
            tmp.write_text(f"new {name}")
        raise RuntimeError("the writer failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temporary, nothing replaced
    assert all((tmp_path / n).read_text() == f"old {n}" for n in names)

    renames, replace = [], os.replace

    def killed_after_the_first_rename(src, dst):
        if Path(dst).name != ".commit.json":
            if renames:
                raise SystemExit("killed")  # stands for SIGKILL: nothing after it runs in this process
            renames.append(dst)
        replace(src, dst)

    monkeypatch.setattr(atomicfile.os, "replace", killed_after_the_first_rename)
    with pytest.raises(SystemExit), atomic_files([tmp_path / n for n in names]) as tmps:
        for tmp, name in zip(tmps, names):
            tmp.write_text(f"new {name}")
    monkeypatch.undo()
    contents = [(tmp_path / n).read_text() for n in names]
    assert contents == ["new model.safetensors", "old config.json", "old README.md"]  # mixed, until completed
    assert (tmp_path / ".commit.json").exists()
    finish_commit(tmp_path)
    assert all((tmp_path / n).read_text() == f"new {n}" for n in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
