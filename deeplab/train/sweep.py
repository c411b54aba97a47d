"""Hydra callback: after a multirun, a table of every run's overrides, status and final metrics."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from deeplab.atomicfile import atomic_path
from deeplab.evaluation.report import markdown_cell
from deeplab.jsonfile import write_json

log = logging.getLogger(__name__)

METRICS = ("miou", "pixel_acc", "mean_acc", "fwiou")
STATUS = "status.json"


def write_status(run_dir: Path, status: str, error: str = "", reason: str = "") -> None:
    """run_dir/status.json: finished, failed (with the error's one line) or interrupted, and for a finished run
    that ended before trainer.max_iters why (early stopping); by rank 0 only."""
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun's other processes share rank 0's run dir
        return
    write_json(run_dir / STATUS, {"status": status, "error": error} | ({"reason": reason} if reason else {}))


def collect_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job dir under sweep_dir: its number, overrides and the metrics of its metrics.json."""
    rows = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        if not overrides_file.is_file():
            continue
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        row: dict[str, Any] = {"run": job.name, "overrides": " ".join(overrides)}
        status_file = job / STATUS
        status = json.loads(status_file.read_text()) if status_file.is_file() else {"status": "unknown"}
        row["status"] = status.get("status", "unknown")
        metrics_file = job / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        finished = row["status"] == "finished"  # a failed job's metrics.json may hold an earlier validation
        for key in METRICS:
            row[key] = metrics.get(key) if finished else None
        row["iteration"] = metrics.get("iteration") if finished else None
        row["error"] = status.get("error", "")
        rows.append(row)
    return rows


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Writes sweep_summary.csv and sweep_summary.md in sweep_dir; rows sorted by mIoU, best first. The CSV
    holds the metrics as metrics.json does (fractions in [0, 1], under the same keys), the Markdown table in
    percent (its header says so)."""
    rows = collect_runs(sweep_dir)
    rows.sort(key=lambda r: -(r["miou"] if isinstance(r["miou"], int | float) else -1.0))
    fields = ["run", "overrides", "status", *METRICS, "iteration", "error"]
    with atomic_path(sweep_dir / "sweep_summary.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)

    def cell(v: Any) -> str:
        return f"{100 * v:.2f}" if isinstance(v, float) else ("-" if v is None else str(v))

    lines = [
        "| run | overrides | status | mIoU % | pixel acc % | mean acc % | FWIoU % | iteration | error |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {markdown_cell(str(r['run']))} | {markdown_cell(str(r['overrides']))} | {r['status']} | "
            + " | ".join(cell(r[k]) for k in (*METRICS, "iteration"))
            + f" | {markdown_cell(str(r['error']))} |"
            for r in rows
        ),
    ]
    with atomic_path(sweep_dir / "sweep_summary.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return rows


class SweepSummary(Callback):
    """Writes sweep_summary.{csv,md} into the multirun dir when the sweep ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = write_summary(sweep_dir)
        log.info("sweep summary of %d runs: %s", len(rows), sweep_dir / "sweep_summary.md")
        print((sweep_dir / "sweep_summary.md").read_text())
        failed = [r["run"] for r in rows if r["status"] != "finished"]
        if failed:
            log.warning("%d of %d runs did not finish (%s): see their status in %s", len(failed), len(rows),
                        ", ".join(failed), sweep_dir / "sweep_summary.md")  # fmt: skip
