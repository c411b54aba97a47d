"""The package's layers (pyproject.toml, [tool.importlinter]): every import points down, checked by import-linter;
and an import added from a lower layer to a higher one breaks the contract."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(project: Path) -> subprocess.CompletedProcess:
    """import-linter's command on the package in `project` (its pyproject.toml holds the contract)."""
    command = [
        sys.executable,
        "-c",
        "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
    ]
    env = {**os.environ, "PYTHONPATH": str(project)}
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)


def test_every_import_points_down() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "every import points down KEPT" in result.stdout


@pytest.mark.parametrize(
    ("module", "upward"),
    [("config/base.py", "deeplab.deploy.predict"), ("models/aspp.py", "deeplab.train.losses"),
     ("data/dataset.py", "deeplab.models.inference")],
)  # fmt: skip
def test_an_import_running_back_up_breaks_the_contract(tmp_path: Path, module: str, upward: str) -> None:
    shutil.copytree(ROOT / "deeplab", tmp_path / "deeplab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "deeplab" / module
    target.write_text(target.read_text() + f"\nimport {upward}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "every import points down BROKEN" in result.stdout
    assert f"deeplab.{module[:-3].replace('/', '.')} -> {upward}" in result.stdout
