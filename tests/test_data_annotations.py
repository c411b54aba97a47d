"""dataset=coco and dataset=labelme: masks drawn from the files labelling tools export, read back exactly as the
generated masks they were made from (RLE, rectangles) or as the polygons draw them; class names and ids, the
overlap, crowd, unannotated and empty-image rules; bad files in one line; check, prepare and a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.configs import compose_config, one_thread
from PIL import Image

from deeplab.config import train_config
from deeplab.data import build_dataset
from deeplab.errors import ConfigError, DatasetError

mask_api = pytest.importorskip("pycocotools.mask")

TINY = [
    "backbone=resnet_tiny", "model.aspp.channels=16", "model.decoder.low_level_channels=8",
    "model.decoder.channels=16", "trainer.max_iters=2", "trainer.batch_size=2", "trainer.eval_interval=2",
    "trainer.ckpt_interval=2", "trainer.log_interval=1", "trainer.num_workers=0", "trainer.deterministic=true",
    "logger.num_images=1", "trainer.crop_size=[16,24]", "trainer.amp=off", "trainer.precise_bn=0",
]  # fmt: skip
H, W = 40, 56


def uncompressed_rle(binary: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a run of zeros."""
    flat = binary.T.reshape(-1).astype(np.uint8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {"size": [binary.shape[0], binary.shape[1]], "counts": counts}


def generated_masks(n: int, seed: int = 0) -> list[np.ndarray]:
    """Class masks with classes 1 (a disc) and 2 (a blob) on background 0, no overlap."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    masks = []
    for _ in range(n):
        m = np.zeros((H, W), np.uint8)
        cy, cx = rng.integers(10, 30), rng.integers(10, 25)
        m[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(20, 60)] = 1
        blob = (np.sin(xx / rng.uniform(2, 5)) + np.cos(yy / rng.uniform(2, 5)) > 1.2) & (xx > 32)
        m[blob] = 2
        masks.append(m)
    return masks


def write_coco(
    root: Path, masks: list[np.ndarray], style: str, extra: list[dict] | None = None
) -> tuple[Path, Path]:
    """images/ + annotations.json with categories 7 ('car', class 1) and 3 ('tree', class 2), in that order."""
    images = root / "images"
    images.mkdir(parents=True)
    coco: dict = {
        "images": [],
        "annotations": [],
        "categories": [{"id": 7, "name": "car"}, {"id": 3, "name": "tree"}],
    }
    rng = np.random.default_rng(1)
    for i, m in enumerate(masks):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(images / f"im{i}.png")
        coco["images"].append({"id": 100 + i, "file_name": f"im{i}.png", "height": H, "width": W})
        for class_id, category in ((1, 7), (2, 3)):
            binary = m == class_id
            if not binary.any():
                continue
            if style == "compressed":
                rle = mask_api.encode(np.asfortranarray(binary.astype(np.uint8)))
                segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
            else:
                segmentation = uncompressed_rle(binary)
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": 100 + i, "category_id": category,
                                        "segmentation": segmentation, "area": float(binary.sum()), "iscrowd": 0})  # fmt: skip
    coco["annotations"] += extra or []
    path = root / "annotations.json"
    path.write_text(json.dumps(coco))
    return images, path


def coco_config(train: tuple[Path, Path], val: tuple[Path, Path], *extra: str):
    return compose_config(
        ["dataset=coco", f"dataset.train.images={train[0]}", f"dataset.train.annotations={train[1]}",
         f"dataset.val.images={val[0]}", f"dataset.val.annotations={val[1]}", *extra]
    )  # fmt: skip


@pytest.mark.parametrize("style", ["compressed", "uncompressed"])
def test_coco_rle_reads_back_exactly_the_masks_it_came_from(tmp_path, style) -> None:
    masks = generated_masks(3)
    files = write_coco(tmp_path, masks, style)
    cfg = coco_config(files, files)
    d = train_config(cfg).dataset
    assert d.num_classes == 3 and d.class_names == [
        "background",
        "car",
        "tree",
    ]  # from the file, in its order
    val = build_dataset(cfg, "val")
    assert len(val) == 3
    for i, m in enumerate(masks):
        _, mask = val[i]
        assert np.array_equal(mask.numpy(), m)


def test_coco_polygons_overlaps_crowd_and_the_keys(tmp_path) -> None:
    big = [[4.0, 4.0, 40.0, 4.0, 40.0, 30.0, 4.0, 30.0]]  # a car, 36x26
    small = [[10.0, 10.0, 20.0, 10.0, 20.0, 20.0, 10.0, 20.0]]  # a tree inside it: the smaller wins
    crowd_rle = uncompressed_rle(np.pad(np.ones((6, 6), bool), ((30, 4), (44, 6))))
    extra = [
        {"id": 50, "image_id": 100, "category_id": 7, "segmentation": big, "area": 936.0, "iscrowd": 0},
        {"id": 51, "image_id": 100, "category_id": 3, "segmentation": small, "area": 100.0, "iscrowd": 0},
        {"id": 52, "image_id": 100, "category_id": 3, "segmentation": crowd_rle, "area": 36.0, "iscrowd": 1},
    ]
    files = write_coco(tmp_path, [np.zeros((H, W), np.uint8)] * 2, "compressed", extra)  # image 101: none
    drawn = {k: mask_api.decode(mask_api.merge(mask_api.frPyObjects(p, H, W))).astype(bool) for k, p in (("big", big), ("small", small))}  # fmt: skip
    crowd = mask_api.decode(mask_api.frPyObjects(crowd_rle, H, W)).astype(bool)
    expected = np.zeros((H, W), np.uint8)
    expected[crowd] = 255
    expected[drawn["big"]] = 1
    expected[drawn["small"]] = 2
    val = build_dataset(coco_config(files, files), "val")
    assert len(val) == 1  # the image without annotations is skipped (dataset.empty_images=skip)
    assert np.array_equal(val[0][1].numpy(), expected)
    assert abs(int(drawn["big"].sum()) - 37 * 27) < 70  # the polygon draws about its area
    kept = build_dataset(coco_config(files, files, "dataset.crowd=keep", "dataset.unannotated=ignore",
                                     "dataset.empty_images=background"), "val")  # fmt: skip
    assert len(kept) == 2
    keep = expected.copy()
    keep[crowd] = 2
    keep[~(crowd | drawn["big"] | drawn["small"])] = 255
    assert np.array_equal(kept[0][1].numpy(), keep)
    assert set(np.unique(kept[1][1].numpy())) == {255}
    # dataset.categories picks and orders the classes: [3] makes 'tree' class 1 and leaves cars undrawn
    only = coco_config(files, files, "dataset.categories=[3]")
    assert train_config(only).dataset.class_names == ["background", "tree"]
    only_trees = build_dataset(only, "val")[0][1].numpy()
    assert np.array_equal(only_trees == 1, drawn["small"] | (crowd & False)) and 2 not in only_trees


def test_bad_coco_files_are_named_in_one_line(tmp_path, capsys) -> None:
    from deeplab.data.check import main as check_main

    bad = [
        {"id": 60, "image_id": 999, "category_id": 7, "segmentation": [[1, 1, 5, 1, 5, 5]], "area": 8.0},
        {"id": 61, "image_id": 100, "category_id": 42, "segmentation": [[1, 1, 5, 1, 5, 5]], "area": 8.0},
        {"id": 62, "image_id": 100, "category_id": 7, "segmentation": [[1, 1, 90, 1, 90, 5]], "area": 8.0},
    ]
    files = write_coco(tmp_path, generated_masks(2), "compressed", bad)
    with pytest.raises(DatasetError) as e:
        build_dataset(coco_config(files, files), "val")
    message = str(e.value)
    assert "\n" not in message and "annotation 60 names image_id 999" in message and "(and 1 more)" in message
    args = ["dataset=coco", f"dataset.train.images={files[0]}", f"dataset.train.annotations={files[1]}",
            f"dataset.val.images={files[0]}", f"dataset.val.annotations={files[1]}", "--split", "val"]  # fmt: skip
    assert check_main(args) == 1
    out = capsys.readouterr().out
    assert "names category_id 42" in out and "polygon point (90.0, 1.0) outside its 56x40 image" in out
    with pytest.raises(ConfigError, match="dataset.train.annotations: .*missing.json does not exist"):
        train_config(coco_config((files[0], tmp_path / "missing.json"), files))


def write_labelme(folder: Path, masks: list[np.ndarray], labels: dict[int, str]) -> None:
    """Each mask as labelme rectangles: one per row run of a class (exact: PIL draws both corners)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i, m in enumerate(masks):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(folder / f"p{i}.jpg")
        shapes = []
        for y in range(H):
            x = 0
            while x < W:
                c, start = m[y, x], x
                while x < W and m[y, x] == c:
                    x += 1
                if c:
                    shapes.append(
                        {
                            "label": labels[int(c)],
                            "points": [[start, y], [x - 1, y]],
                            "shape_type": "rectangle",
                        }
                    )
        (folder / f"p{i}.json").write_text(json.dumps({"shapes": shapes, "imagePath": f"p{i}.jpg", "imageHeight": H, "imageWidth": W}))  # fmt: skip


def labelme_config(train: Path, val: Path, *extra: str):
    return compose_config(
        ["dataset=labelme", f"dataset.train.folder={train}", f"dataset.val.folder={val}", *extra]
    )


def test_labelme_shapes_read_back_as_drawn(tmp_path) -> None:
    masks = generated_masks(2, seed=3)
    write_labelme(tmp_path / "train", masks, {1: "person", 2: "bicycle"})
    cfg = labelme_config(tmp_path / "train", tmp_path / "train")
    d = train_config(cfg).dataset
    assert d.class_names == ["background", "bicycle", "person"]  # from the files, sorted
    val = build_dataset(cfg, "val")
    relabel = np.array([0, 2, 1], np.uint8)  # person is class 2, bicycle class 1
    for i, m in enumerate(masks):
        assert np.array_equal(val[i][1].numpy(), relabel[m])
    # the other shapes, drawn over one another in file order
    shapes = [
        {"label": "person", "points": [[2, 2], [30, 2], [30, 20], [2, 20]], "shape_type": "polygon"},
        {"label": "bicycle", "points": [[10, 10], [14, 10]], "shape_type": "circle"},
        {"label": "_background_", "points": [[0, 35], [55, 35]], "shape_type": "line"},
        {"label": "person", "points": [[50, 5]], "shape_type": "point"},
    ]
    (tmp_path / "train" / "p0.json").write_text(
        json.dumps({"shapes": shapes, "imageHeight": H, "imageWidth": W})
    )
    mask = build_dataset(
        labelme_config(tmp_path / "train", tmp_path / "train", "dataset.line_width=5"), "val"
    )[0][1].numpy()
    assert (mask[2:21, 2:31] > 0).all() and mask[12, 12] == 1 and mask[2, 25] == 2  # circle over polygon
    assert (mask[33:38, 0:3] == 0).all() and mask[5, 50] == 2 and mask[0, 40] == 0


def test_bad_labelme_files_and_a_tiny_run(tmp_path) -> None:
    from deeplab.train.engine import train

    masks = generated_masks(4, seed=5)
    write_labelme(tmp_path / "train", masks[:2], {1: "person", 2: "bicycle"})
    write_labelme(tmp_path / "val", masks[2:], {1: "person", 2: "bicycle"})
    Image.new("RGB", (W, H)).save(tmp_path / "train" / "unlabelled.jpg")  # no JSON: skipped by default
    cfg = labelme_config(tmp_path / "train", tmp_path / "val", *TINY)
    assert len(build_dataset(cfg, "train")) == 2
    with_empty = build_dataset(
        labelme_config(tmp_path / "train", tmp_path / "val", "dataset.empty_images=background"), "train"
    )
    assert len(with_empty) == 3 and not with_empty.load_mask(2)[0].any()  # unlabelled.jpg: all background
    with one_thread():
        metrics = train(cfg, tmp_path / "run")
    assert 0 <= metrics["miou"] <= 1 and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    (tmp_path / "val" / "p0.json").write_text(json.dumps({"shapes": [{"label": "dog", "points": [[1, 1], [3, 3]], "shape_type": "rectangle"}], "imageHeight": H, "imageWidth": W}))  # fmt: skip
    with pytest.raises(
        DatasetError, match=r"p0.json: shape 0 has the label 'dog', not in dataset.class_names"
    ):
        build_dataset(cfg, "val")


def test_a_tiny_coco_run_and_prepare_writes_the_folder_dataset(tmp_path) -> None:
    from deeplab.data.prepare import main as prepare_main
    from deeplab.train.engine import train

    masks = generated_masks(4, seed=7)
    train_files = write_coco(tmp_path / "train", masks[:2], "compressed")
    val_files = write_coco(tmp_path / "val", masks[2:], "uncompressed")
    cfg = coco_config(train_files, val_files, *TINY)
    with one_thread():
        metrics = train(cfg, tmp_path / "run")
    assert 0 <= metrics["miou"] <= 1
    out = tmp_path / "folder"
    args = ["dataset=coco", f"dataset.train.images={train_files[0]}", f"dataset.train.annotations={train_files[1]}",
            f"dataset.val.images={val_files[0]}", f"dataset.val.annotations={val_files[1]}"]  # fmt: skip
    assert prepare_main(["masks", "--output", str(out), *args]) == 0
    # a second run into the same folder: the hard-linked photos stay, nothing temporary is left
    assert prepare_main(["masks", "--output", str(out), *args]) == 0
    assert not [p for p in out.rglob(".*")]
    written = np.asarray(Image.open(out / "val" / "masks" / "im1.png"))
    assert Image.open(out / "val" / "masks" / "im1.png").mode == "P" and np.array_equal(written, masks[3])
    assert (out / "train" / "images" / "im0.png").is_file()
    folder_cfg = compose_config(["dataset=folder", f"dataset.train.images={out / 'train' / 'images'}",
                                 f"dataset.train.masks={out / 'train' / 'masks'}", f"dataset.val.images={out / 'val' / 'images'}",
                                 f"dataset.val.masks={out / 'val' / 'masks'}", "dataset.num_classes=3"])  # fmt: skip
    assert np.array_equal(build_dataset(folder_cfg, "val")[1][1].numpy(), masks[3])
    assert "class_names: [background, car, tree]" in (out / "dataset.yaml").read_text()


def test_multilabel_coco_keeps_overlapping_annotations_each_in_its_class(tmp_path) -> None:
    """With dataset.multilabel the categories are the classes (no background) and each annotation is drawn into
    its own channel: a tree over a car leaves the car; a crowd region is ignored for its class only."""
    masks = generated_masks(2, seed=3)
    yy, xx = np.mgrid[:H, :W]
    middle = int(np.flatnonzero((masks[0] == 1).any(1)).mean())
    over = (yy <= middle) & (xx < 32)  # a tree annotation over the top half of the car
    crowd = (yy >= 30) & (xx < 10)  # a crowd of cars
    extra = [
        {"id": 90, "image_id": 100, "category_id": 3, "segmentation": uncompressed_rle(over), "area": 1.0, "iscrowd": 0},
        {"id": 91, "image_id": 100, "category_id": 7, "segmentation": uncompressed_rle(crowd), "area": 1.0, "iscrowd": 1},
    ]  # fmt: skip
    files = write_coco(tmp_path, masks, "uncompressed", extra)
    cfg = coco_config(files, files, "dataset.multilabel=true")
    d = train_config(cfg).dataset
    assert d.num_classes == 2 and d.class_names == ["car", "tree"]  # no background class
    _, mask = build_dataset(cfg, "val")[0]
    car = (masks[0] == 1).astype(np.uint8)
    car[crowd & (masks[0] != 1)] = 255  # ignored for cars only, where no regular car annotation is
    assert np.array_equal(mask[0].numpy(), car)
    assert np.array_equal(mask[1].numpy(), ((masks[0] == 2) | over).astype(np.uint8))
    assert (mask[0].numpy() == 1)[over].any()  # the overlap: car and tree at once
    unannotated = build_dataset(
        coco_config(files, files, "dataset.multilabel=true", "dataset.unannotated=ignore"), "val"
    )
    m = unannotated[0][1].numpy()
    assert (m[:, ~((masks[0] > 0) | over | crowd)] == 255).all()


def test_multilabel_labelme_draws_each_shape_into_its_class(tmp_path) -> None:
    folder = tmp_path / "lm"
    folder.mkdir()
    Image.new("RGB", (W, H)).save(folder / "p0.jpg")
    shapes = [
        {"label": "_background_", "points": [[0, 0], [W - 1, H - 1]], "shape_type": "rectangle"},
        {"label": "road", "points": [[0, 10], [W - 1, 29]], "shape_type": "rectangle"},
        {"label": "lane", "points": [[20, 0], [24, H - 1]], "shape_type": "rectangle"},
    ]
    (folder / "p0.json").write_text(json.dumps({"shapes": shapes, "imageHeight": H, "imageWidth": W}))
    cfg = labelme_config(folder, folder, "dataset.multilabel=true")
    assert train_config(cfg).dataset.class_names == ["lane", "road"]
    _, mask = build_dataset(cfg, "val")[0]
    lane, road = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    lane[:, 20:25], road[10:30] = 1, 1
    assert np.array_equal(mask.numpy(), np.stack([lane, road]))  # the lane marking stays road too
