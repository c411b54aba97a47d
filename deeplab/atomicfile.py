"""Files written whole or not at all: a temporary file next to the target, synced, then renamed over it.

Checkpoints and exported models are written this way, so a crash, a full disk or a failed export leaves
either the previous file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends without an exception it replaces `path`,
    otherwise it is deleted and `path` is left as it was.

    A symbolic link at `path` keeps its place: the file it points to is the one replaced. The temporary name
    ends with the target's suffix (.scene.tif.<pid>.<id>.tmp.tif), for writers that choose the format by it
    (Pillow, OpenCV's video writer, GDAL).
    """
    target = Path(os.path.realpath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{target.suffix}")
    try:
        yield tmp
        _fsync_file(tmp)
        _set_mode(tmp, target)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)
    _remove_stale_temps(target)


COMMIT_FILE = ".commit.json"  # the renames that make a set of files current, while they are being made


@contextlib.contextmanager
def atomic_files(paths: Sequence[Path]) -> Iterator[list[Path]]:
    """Several files of one folder replaced together (a model folder's card, weights and README): yields a
    temporary path for each; when the block succeeds, the renames are recorded in the folder's .commit.json
    before they are made, so a process killed between two of them leaves a record that finish_commit (run
    by the next write or read of the folder) completes. A failed block deletes its temporary files."""
    targets = [Path(os.path.realpath(p)) for p in paths]
    folder = targets[0].parent
    if any(t.parent != folder for t in targets):
        raise ValueError("atomic_files: the files must share one folder")
    folder.mkdir(parents=True, exist_ok=True)
    finish_commit(folder)
    for target in targets:  # those of an earlier write killed before its journal
        _remove_stale_temps(target)
    tag = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmps = [t.with_name(f".{t.name}.{tag}.tmp{t.suffix}") for t in targets]
    try:
        yield tmps
        for tmp, target in zip(tmps, targets):
            _fsync_file(tmp)
            _set_mode(tmp, target)
        with atomic_path(folder / COMMIT_FILE) as journal:
            journal.write_text(json.dumps({tmp.name: t.name for tmp, t in zip(tmps, targets)}))
    except BaseException:
        for tmp in tmps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    finish_commit(folder)


def finish_commit(folder: Path) -> None:
    """Complete the renames an interrupted atomic_files recorded in folder/.commit.json (none: nothing to do)."""
    journal = folder / COMMIT_FILE
    try:
        renames = json.loads(journal.read_text())
    except FileNotFoundError:
        return
    for tmp, name in renames.items():
        if (folder / tmp).exists():  # a rename made before the kill is not made twice
            os.replace(folder / tmp, folder / name)
    _fsync_dir(folder)
    journal.unlink()
    _fsync_dir(folder)


def save_image(image: Image.Image, path: str | Path, **options: Any) -> None:
    """Image.save, whole or not at all: the format from path's suffix (.png, .jpg, ...), options as Pillow's."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format=Image.registered_extensions()[path.suffix.lower()], **options)


def _set_mode(tmp: Path, target: Path) -> None:
    """The replaced file's permissions, or for a new file those the umask gives (0644 under umask 022), whatever
    mode the writer created the temporary file with (safetensors' writer uses 0600)."""
    try:
        mode = os.stat(target).st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(tmp, mode)


def _fsync_file(path: Path) -> None:
    """The data on disk before the rename makes it visible (writers may not have synced it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; not possible on every platform or file system, hence best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(path: Path) -> None:
    """Delete temporary files of earlier writes of path that were killed before their rename."""
    # .NAME.PID.ID.tmp.SUFFIX, or .NAME.PID.ID.tmp as earlier versions named them
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp*"):
        pid = tmp.name[len(path.name) + 2 :].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists but belongs to another user
        return True
    return True
