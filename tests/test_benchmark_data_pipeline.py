"""benchmarks/data_pipeline.py runs end to end at tiny sizes (so it cannot rot)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "data_pipeline.py"


def test_data_pipeline_benchmark_tiny(capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("data_pipeline_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--num-images", "3", "--crop-size", "33", "--size", "40x30", "--passes", "1"])
    assert results["deeplab"] > 0 and results["torchvision_pil"] > 0
    assert results["ratio"] == pytest.approx(results["deeplab"] / results["torchvision_pil"])
    assert "ratio deeplab / torchvision" in capsys.readouterr().out


def test_plain_pipeline_matches_the_contract(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("data_pipeline_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    samples = module.make_images(tmp_path, 2, 40, 30)
    image, mask = module.PlainPipeline(samples, 64)[0]
    assert image.shape == (3, 64, 64) and mask.shape == (64, 64) and (mask == 255).any()
