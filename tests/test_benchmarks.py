"""The benchmarks (train step, data loader, evaluation) run end to end at tiny sizes, so they cannot rot."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The scripts' --threads sets torch's process-wide thread count: give it back after each test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import benchmarks/<name>.py as its command line would (its folder on sys.path, for `common`)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # builds two ResNet-50s; the FLOP count and the model names are checked by default
def test_train_step_prints_rates_flops_and_the_ratio(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    train_step = load("train_step", monkeypatch)
    out = train_step.main(
        ["--device", "cpu", "--batch", "2", "--crop", "33", "--iters", "1", "--warmup", "1", "--rounds", "2"]
        + ["--models", "tvlike_r50", "--modes", "fp32", "--matmul-size", "128", "--threads", "1"]
    )
    text = capsys.readouterr().out
    ours, peer = out["results"][("tvlike_r50", "fp32")], out["results"][("tv_r50", "fp32")]
    assert len(ours["rates"]) == 2 and ours["images_per_s"] > 0 and peer["images_per_s"] > 0
    # The ratio pairs the rounds: the median (here the mean) of the two per-round ratios.
    per_round = [a / b for a, b in zip(ours["rates"], peer["rates"])]
    assert out["ratios"]["tvlike_r50/tv_r50 fp32"] == pytest.approx(sum(per_round) / 2)
    # The like-for-like config is torchvision's architecture: the same FLOPs, forward about a third of a step.
    assert out["flops"]["tvlike_r50"] == pytest.approx(out["flops"]["tv_r50"])
    forward, step = out["flops"]["tv_r50"]
    assert 2.5 < step / forward < 3.1
    assert out["peak_tflops"] > 0
    assert "ratio ours/torchvision like-for-like (tvlike_r50 vs tv_r50), fp32:" in text
    assert "GFLOP/img" in text and "MFU" in text and "CPU" in text


@pytest.mark.slow
def test_train_step_runs_every_mode(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    # bf16 autocast, channels_last and torch.compile (minutes on a CPU: the compile of forward and backward).
    train_step = load("train_step", monkeypatch)
    modes = "fp32,bf16,bf16+cl,bf16+cl+compile"
    out = train_step.main(
        ["--device", "cpu", "--batch", "2", "--crop", "33", "--iters", "1", "--warmup", "1", "--rounds", "1"]
        + ["--models", "tvlike_r50", "--no-peer", "--modes", modes, "--matmul-size", "128"]
    )
    for mode in modes.split(","):
        assert out["results"][("tvlike_r50", mode)]["images_per_s"] > 0
    assert "best mode of tvlike_r50 vs torchvision eager fp32" not in capsys.readouterr().out  # no peer run


def test_train_step_flops_match_the_published_count(monkeypatch: pytest.MonkeyPatch) -> None:
    # torchvision's deeplabv3_resnet50 meta "_ops": 178.72 GMACs at 520x520, including its aux head, whose
    # 3x3 conv (1024 -> 256) and 1x1 conv (256 -> 21) run on the 65x65 stride-8 features.
    train_step = load("train_step", monkeypatch)
    forward, _ = train_step.step_flops("tv_r50", 2, 520)
    aux_macs = (1024 * 256 * 9 + 256 * 21) * 65 * 65
    assert forward / 2 == pytest.approx(178.72e9 - aux_macs, rel=1e-4)


def test_train_step_model_names(monkeypatch: pytest.MonkeyPatch) -> None:
    train_step = load("train_step", monkeypatch)
    assert train_step.expand_models("v3p_r101_os16,tvlike_r50", peers=True) == [
        "v3p_r101_os16",
        "tvlike_r50",
        "tv_r101",
        "tv_r50",
    ]
    assert len(train_step.expand_models("all", peers=False)) == 10
    with pytest.raises(SystemExit, match="unknown model"):
        train_step.expand_models("v4_r50_os16", peers=True)
    mode = train_step.parse_mode("bf16+cl+compile")
    assert (mode.amp, mode.channels_last, mode.compile) == (torch.bfloat16, True, True)
    with pytest.raises(SystemExit, match="unknown mode"):
        train_step.parse_mode("fp16")


def test_data_loader_reports_both_pipelines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    data_loader = load("data_loader", monkeypatch)
    results = data_loader.main(
        ["--workers", "0,1", "--num-images", "4", "--size", "64x48", "--crop", "33", "--batch", "2"]
        + ["--rounds", "1", "--device", "cpu", "--data-dir", str(tmp_path / "voc")]
    )
    text = capsys.readouterr().out
    for pipeline in ("train", "eval"):
        assert set(results[pipeline]) == {0, 1}
        assert all(rate > 0 and math.isfinite(rate) for rate in results[pipeline].values())
        assert f"{pipeline}: " in text and "images/s per worker" in text
    assert "the GPU would wait" in text or "keeps up" in text
    # The images stay in --data-dir in the VOC layout and are reused by the next run.
    voc = tmp_path / "voc" / "VOC2012"
    assert len(list((voc / "JPEGImages").glob("*.jpg"))) == 8
    assert (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split() == [
        f"val_0000{i}" for i in range(4)
    ]


def test_evaluate_reports_time_and_confusion_share(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    evaluate = load("evaluate", monkeypatch)
    out = evaluate.main(
        [
            "--device",
            "cpu",
            "--num-images",
            "4",
            "--size",
            "64x48",
            "--model",
            "v3_r50_os16",
            "--workers",
            "0",
            "--passes",
            "2",
            "--threads",
            "1",
        ]
    )
    text = capsys.readouterr().out
    assert len(out["pass_s"]) == 2 and out["eval_s"] == out["pass_s"][-1] > 0 and out["cm_s"] > 0
    assert out["cm_share"] == pytest.approx(out["cm_s"] / out["eval_s"])
    assert "evaluate:" in text and "% of the evaluation" in text


def test_evaluate_counts_updates_as_evaluate_makes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    evaluate = load("evaluate", monkeypatch)
    # Batches of equal sizes are one update; a batch of mixed sizes is one update per image.
    sizes = [(2, 3), (2, 3), (4, 5), (2, 3), (2, 3)]
    assert evaluate.update_shapes(sizes, 2) == Counter({(2, 2, 3): 1, (1, 4, 5): 1, (1, 2, 3): 2})
    assert evaluate.update_shapes(sizes, 1) == Counter({(1, 2, 3): 4, (1, 4, 5): 1})


def test_generated_voc_images_have_the_asked_sizes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    load("evaluate", monkeypatch)
    common = sys.modules["common"]
    from PIL import Image

    root = common.write_voc_images(tmp_path, 1, 3, [(40, 30), (30, 40)])
    jpgs = sorted((root / "VOC2012" / "JPEGImages").glob("val_*.jpg"))
    assert [Image.open(p).size for p in jpgs] == [(40, 30), (30, 40), (40, 30)]
    mask = Image.open(root / "VOC2012" / "SegmentationClass" / "val_00001.png")
    assert mask.mode == "P" and mask.size == (30, 40)
    stamp = (root / common.DATA_STAMP).stat().st_mtime_ns
    assert common.write_voc_images(tmp_path, 1, 3, [(40, 30), (30, 40)]) == root
    assert (root / common.DATA_STAMP).stat().st_mtime_ns == stamp  # reused, not rewritten


@pytest.mark.slow  # timing rounds; the MACs against the TF model zoo are checked below by default
def test_backbones_table_and_the_mobilenet_ratio(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    backbones = load("backbones", monkeypatch)
    out = backbones.main(
        ["--size", "33", "--backbones", "mobilenet_v3_large", "--runs", "1", "--rounds", "2"]
    )  # xception65's recipe row is checked against the TF model zoo below
    rows = {(r["model"], r["os"]): r for r in out["rows"]}
    assert rows[("deeplabv3plus mobilenet_v3_large", 8)]["cpu_ms"] > 0
    assert out["mobilenet"]["ratio"] > 0
    text = capsys.readouterr().out
    assert "ratio ours/torchvision" in text and "deeplabv3plus mobilenet_v3_large" in text


def test_the_xception65_recipe_has_the_published_multiply_adds(monkeypatch: pytest.MonkeyPatch) -> None:
    backbones = load("backbones", monkeypatch)
    model = backbones.ours("experiment=voc_aug_deeplabv3plus_xception65_os16", device="meta")
    assert backbones.gmacs(model, 513) == pytest.approx(54.17, rel=0.01)  # TF DeepLab model zoo, OS 16


@pytest.mark.slow  # exports, quantises (ONNX Runtime, NNCF) and times six runtimes
def test_inference_runtimes_times_every_runtime_against_onnx_runtime_int8() -> None:
    """Run as its command: OpenVINO runs in no test process (see test_openvino.py)."""
    from helpers.processes import run_cli

    if importlib.util.find_spec("openvino") is None:
        pytest.skip("needs openvino")
    proc = run_cli("benchmarks/inference_runtimes.py", "--size", "65", "--batch", "2", "--rounds", "1",
                   "--models", "mobilenet_v3", "--skip-accuracy")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {line.split(":")[0]: line for line in proc.stdout.splitlines()}
    for batch in ("batch 1", "batch 2"):
        line = lines[f"mobilenet_v3 65x65, {batch}"]
        assert all(k in line for k in ("eager_fp32", "onnxruntime_int8", "openvino_fp32", "openvino_int8"))
    assert proc.stdout.count("speed against onnxruntime_int8 (above 1: faster): eager_fp32") == 2
    assert "runs the fp32 IR at" in proc.stdout


@pytest.mark.slow  # starts the server twice and sends requests for a few seconds
def test_serve_load_reports_both_batching_settings_and_the_soak(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, trained_run, tmp_path
) -> None:
    import numpy as np
    from PIL import Image

    if (
        importlib.util.find_spec("litserve") is None
    ):  # not imported: it binds a handler to the captured stderr
        pytest.skip("needs litserve")
    load_test = load("serve_load", monkeypatch)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    checkpoint = trained_run[0] / "checkpoints" / "best.pt"
    out = load_test.main(["--checkpoint", str(checkpoint), "--images", str(tmp_path), "--clients", "4",
                          "--seconds", "3", "--single-seconds", "2", "--soak", "6", "--amp", "off"])  # fmt: skip
    assert out["batching on"]["clients"]["errors"] == 0 and out["batching off"]["clients"]["requests"] > 0
    assert out["soak"]["good_lost"] == 0 and out["soak"]["bad_wrong_status"] == 0 and out["soak"]["bad"] > 0
    assert "batching on / off at 4 clients" in capsys.readouterr().out


@pytest.mark.slow  # two processes build ResNet-101
def test_activation_checkpointing_benchmark_prints_both_ratios(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    bench = load("activation_checkpointing", monkeypatch)
    out = bench.main(["--crop", "65", "--batch", "2"])
    assert out["memory_ratio"] > 0 and out["time_ratio"] > 0
    assert "checkpointing / plain: peak memory" in capsys.readouterr().out


@pytest.mark.slow  # a few seconds of model building and timed blocks
def test_loop_overhead_times_each_plug_point_against_the_plain_step(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    loop_overhead = load("loop_overhead", monkeypatch)
    out = loop_overhead.main(
        ["--backbone", "resnet_tiny", "--crop", "24", "--steps", "2", "--rounds", "2", "--log-interval", "1"]
        + ["--modes", "plain,ema,csv", "--threads", "1"]
    )
    text = capsys.readouterr().out
    assert set(out["ratios"]) == {"plain", "ema", "csv"} and out["ratios"]["plain"] == 1.0
    assert all(len(t) == 2 and min(t) > 0 for t in out["times"].values())
    assert "ema/plain" in text and "csv/plain" in text and "at most 3%" in text
    assert set(out["shares"]) == {"ema", "csv"} and all(v > 0 for v in out["shares"].values())


# The CamVid benchmarks' recipe (experiment=camvid_cpu) cut to seconds, on generated CamVid
TINY_CAMVID = ["backbone=resnet_tiny", "model.aspp.channels=16", "model.decoder.low_level_channels=8",
               "model.decoder.channels=16", "trainer.batch_size=2", "trainer.crop_size=[16,24]",
               "trainer.num_workers=0", "trainer.amp=off", "dataset.check_labels=false"]  # fmt: skip


def tiny_camvid(root: Path) -> Path:
    from helpers.fake_data import write_camvid

    write_camvid(root / "camvid", {"train": 4, "val": 2, "test": 0})
    return root


@pytest.mark.slow  # three tiny train.py processes on generated CamVid
def test_seed_spread_reports_the_spread_and_a_repeated_seed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path
) -> None:
    tiny_camvid(tmp_path)
    spread = load("seed_spread", monkeypatch)
    tiny = [*TINY_CAMVID, "trainer.max_iters=2", "trainer.eval_interval=2", "trainer.ckpt_interval=2",
            "loss.class_weights=null"]  # fmt: skip
    out = spread.main(
        ["--root", str(tmp_path), "--seeds", "0,1", "--repeat", "0", "--work", str(tmp_path / "w"), *tiny]
    )
    assert len(out["scores"]) == 2 and out["std"] >= 0
    assert (
        out["repeat"]["first"] == out["repeat"]["again"]
    )  # trainer.deterministic=true: one seed, one result
    assert "2 seeds: mean" in capsys.readouterr().out


@pytest.mark.slow  # four tiny training runs in their own processes
def test_multilabel_camvid_compares_both_models_on_every_class(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path
) -> None:
    tiny_camvid(tmp_path)
    bench = load("multilabel_camvid", monkeypatch)
    out = bench.main(
        [
            "--root",
            str(tmp_path),
            "--iters",
            "2",
            "--seeds",
            "0,1",
            "--work",
            str(tmp_path / "w"),
            *TINY_CAMVID,
        ]
    )
    assert len(out["softmax"]) == 2 and len(out["multilabel"][0]) == 14
    masks = sorted((tmp_path / "w" / "data" / "val" / "masks").iterdir())
    assert len(masks) == 14 and "| mIoU of the 3 containing classes |" in capsys.readouterr().out


def test_early_stop_replay_stops_where_the_loop_would(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys
) -> None:
    """A curve that rises, stalls for 3 validations (rises under min_delta), then rises again."""
    rows = ["step,train/minutes,val/mIoU"]
    scores = [0.30, 0.40, 0.402, 0.404, 0.401, 0.50, 0.55]
    rows += [f"{50 * (i + 1)},{i + 1.0},{s}" for i, s in enumerate(scores)]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    replay = load("early_stop_replay", monkeypatch)
    out = replay.main([str(tmp_path), "--patience", "3,4", "--min-delta", "0.005"])
    assert out[0] == {"patience": 3, "stop": 250, "best": 0.40, "minutes": 5.0}
    assert out[1]["stop"] == 350 and out[1]["best"] == 0.55  # never stops: the full run's best
    assert "| 3 | 250 | 40.00 (100) | 5.0 | 29% | 15.00 |" in capsys.readouterr().out
