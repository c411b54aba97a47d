"""JSON files written whole or not at all (a temporary file renamed into place)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deeplab.atomicfile import atomic_path


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
