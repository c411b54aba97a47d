"""python -m deeplab.data.prepare on small archives built in the official layouts."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.configs import compose_config
from helpers.fake_data import tar_folder, write_sbd, write_voc

import deeplab.data.prepare as prepare
from deeplab.data import build_dataset

VOC_TRAIN = ["2007_000001", "2007_000002", "2007_000003"]
VOC_VAL = ["2007_000004", "2007_000005"]
SBD_TRAIN = ["2007_000002", "2007_000004", "2008_000001"]
SBD_VAL = ["2008_000002", "2007_000005"]
TRAINAUG = ["2007_000001", "2007_000002", "2007_000003", "2008_000001", "2008_000002"]


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VOCtrainval_11-May-2012.tar (VOCdevkit/VOC2012/...) and benchmark.tgz (benchmark_RELEASE/dataset/...)."""
    src = tmp_path_factory.mktemp("src")
    out = tmp_path_factory.mktemp("archives")
    write_voc(src / "voc", VOC_TRAIN, VOC_VAL)
    write_sbd(src / "sbd", SBD_TRAIN, SBD_VAL)
    tar_folder(src / "voc" / "VOCdevkit", "VOCdevkit", out / "VOCtrainval_11-May-2012.tar")
    tar_folder(src / "sbd" / "benchmark_RELEASE", "benchmark_RELEASE", out / "benchmark.tgz")
    return out


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_voc_aug_from_archives(archives: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"
    assert prepare.main(["voc_aug", "--root", str(root), "--archives", str(archives), "--no-verify"]) == 0
    out, err = capsys.readouterr()
    assert (
        "voc: train 3, val 2" in out and "sbd: train 3, val 2" in out and "voc_aug: train_aug 5, val 2" in out
    )
    assert "checksum of" in err and "train has 3 ids, expected 1,464" in err  # warned, not failed
    voc = root / "VOCdevkit" / "VOC2012"
    assert (voc / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split() == TRAINAUG
    assert (root / "benchmark_RELEASE" / "dataset" / "cls" / "2008_000002.mat").is_file()
    assert not [p for p in root.iterdir() if p.name.startswith(".unpack")]
    cfg = compose_config(["dataset=voc_aug", f"dataset.root={root}", "trainer.crop_size=16"])
    assert len(build_dataset(cfg, "train")) == 5 and len(build_dataset(cfg, "val")) == 2
    # a second run finds everything in place
    assert prepare.main(["voc_aug", "--root", str(root), "--archives", str(archives), "--no-verify"]) == 0
    assert "not unpacking again" in capsys.readouterr().out


def test_checksum_mismatch_fails_without_no_verify(archives: Path, tmp_path: Path, capsys) -> None:
    assert prepare.main(["voc", "--root", str(tmp_path), "--archives", str(archives)]) == 2
    err = capsys.readouterr().err
    assert "error: checksum of" in err and "VOCtrainval_11-May-2012.tar" in err and "--no-verify" in err
    assert not (tmp_path / "VOCdevkit").exists()


def test_strict_run_passes_when_checksums_and_counts_match(
    archives: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    voc = prepare.ARCHIVES["voc"]
    monkeypatch.setitem(
        prepare.ARCHIVES, "voc", prepare.Archive(voc.filename, voc.url, md5(archives / voc.filename), voc.top)
    )
    monkeypatch.setitem(prepare.EXPECTED, "voc", {"train": 3, "val": 2})
    assert prepare.main(["voc", "--root", str(tmp_path), "--archives", str(archives)]) == 0
    monkeypatch.setitem(prepare.EXPECTED, "voc", {"train": 1464, "val": 1449})
    assert prepare.main(["voc", "--root", str(tmp_path), "--archives", str(archives)]) == 2  # counts differ


@pytest.fixture(scope="module")
def server(archives: Path) -> Iterator[str]:
    """An HTTP server on localhost serving the archives folder, as the datasets' sites serve them."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archives))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_with_checksum(
    archives: Path, server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    sbd = prepare.ARCHIVES["sbd"]
    url = f"{server}/{sbd.filename}"
    monkeypatch.setitem(
        prepare.ARCHIVES, "sbd", prepare.Archive(sbd.filename, url, md5(archives / sbd.filename), sbd.top)
    )
    monkeypatch.setitem(prepare.EXPECTED, "sbd", {"train": 3, "val": 2})
    root = tmp_path / "data"
    assert prepare.main(["sbd", "--root", str(root)]) == 0
    assert "checksum ok" in capsys.readouterr().out
    assert (root / sbd.filename).is_file() and not (root / (sbd.filename + ".part")).exists()
    assert (root / "benchmark_RELEASE" / "dataset" / "train.txt").read_text().split() == SBD_TRAIN


def test_missing_archive_and_failed_download(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    assert prepare.main(["sbd", "--root", str(tmp_path / "r"), "--archives", str(tmp_path)]) == 2
    assert "benchmark.tgz not found" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # the root it made is removed again
    sbd = prepare.ARCHIVES["sbd"]
    missing = f"{server}/gone.tgz"  # 404
    monkeypatch.setitem(prepare.ARCHIVES, "sbd", prepare.Archive(sbd.filename, missing, sbd.md5, sbd.top))
    assert prepare.main(["sbd", "--root", str(tmp_path / "r")]) == 2
    assert "cannot download" in capsys.readouterr().err and not list((tmp_path / "r").glob("*.part"))


def test_damaged_archive(tmp_path: Path, capsys) -> None:
    (tmp_path / "benchmark.tgz").write_bytes(b"\x1f\x8b not really gzip")
    assert (
        prepare.main(["sbd", "--root", str(tmp_path / "r"), "--archives", str(tmp_path), "--no-verify"]) == 2
    )
    assert "cannot unpack" in capsys.readouterr().err
