"""What an evaluation explains beyond its four numbers: the confusion matrix and the per-class table.

Written next to metrics.json by evaluate.py and by each validation in training:

    confusion_matrix.csv  pixel counts, rows = truth, columns = prediction, headed by the class names
    confusion_matrix.png  rows normalised (each true class's pixels split over the predictions), classes named
    per_class.csv, .md    IoU, recall, precision, and each class's share of the true and the predicted pixels

The figure shows every class up to FIGURE_CLASSES (30) classes. Above that (ADE20K's 150) it shows the
FIGURE_CLASSES classes with the most confused pixels (a class's off-diagonal row plus column sum: pixels of it
predicted as another class, and pixels of others predicted as it), in class order; their rows are still
normalised over all the predictions, so a row shown may sum to less than 100%.

A multi-label model has a 2x2 confusion table per class instead: confusion_matrix.csv lists each class's true and
false positives and negatives, per_class.csv/.md the same columns as above (the shares are of the class's
scored pixels), and there is no figure.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from deeplab.atomicfile import atomic_path, save_image
from deeplab.evaluation.multilabel_metrics import COUNT_NAMES, MultiLabelMetrics

FIGURE_CLASSES = 30
PER_CLASS_COLUMNS = ("class", "iou", "recall", "precision", "true_share", "predicted_share",
                     "true_pixels", "predicted_pixels")  # fmt: skip


def per_class(matrix: np.ndarray, names: Sequence[str]) -> list[dict[str, float | int | str]]:
    """One row per class of a (C, C) confusion matrix (rows = truth): IoU, recall (diag / row sum), precision
    (diag / column sum), shares of all scored true and predicted pixels, pixel counts; NaN where undefined."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (len(names), len(names)):
        raise ValueError(f"{len(names)} class names for a {m.shape} confusion matrix")
    diag, rows, cols, total = m.diagonal(), m.sum(1), m.sum(0), max(m.sum(), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = diag / (rows + cols - diag)
        recall, precision = diag / rows, diag / cols
    return [
        {
            "class": name,
            "iou": float(iou[c]),
            "recall": float(recall[c]),
            "precision": float(precision[c]),
            "true_share": float(rows[c] / total),
            "predicted_share": float(cols[c] / total),
            "true_pixels": int(rows[c]),
            "predicted_pixels": int(cols[c]),
        }
        for c, name in enumerate(names)
    ]


def _text(path: Path, content: str) -> None:
    """Written whole or not at all (a temporary file renamed into place), as metrics.json."""
    with atomic_path(path) as tmp:
        tmp.write_text(content)


def counts_csv(corner: str, columns: Sequence[str], names: Sequence[str], counts: np.ndarray) -> str:
    """A table of integer counts, a row per class (named in the first column, headed by `corner`)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([corner, *columns])
    for name, row in zip(names, np.asarray(counts, dtype=np.int64).tolist()):
        writer.writerow([name, *row])
    return out.getvalue()


def confusion_csv(matrix: np.ndarray, names: Sequence[str]) -> str:
    return counts_csv("truth \\ prediction", names, names, matrix)


def per_class_csv(rows: list[dict[str, float | int | str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=PER_CLASS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    # NaN (a class absent from truth and prediction) is left empty, as spreadsheets read it.
    writer.writerows(
        {k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows
    )
    return out.getvalue()


def markdown_cell(text: str) -> str:
    """text as one cell of a Markdown table: a | ends no cell, and nothing becomes HTML."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def per_class_markdown(rows: list[dict[str, float | int | str]]) -> str:
    def pct(value: float | int | str) -> str:
        return "-" if isinstance(value, float) and math.isnan(value) else f"{100 * float(value):.2f}"

    lines = ["| class | IoU % | recall % | precision % | true share % | predicted share % |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        cells = [pct(r[k]) for k in PER_CLASS_COLUMNS[1:6]]
        lines.append(f"| {markdown_cell(str(r['class']))} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def figure_classes(matrix: np.ndarray, limit: int = FIGURE_CLASSES) -> list[int]:
    """The classes the figure shows: all up to `limit`, else the `limit` with the most confused pixels
    (off-diagonal row + column sums), in class order."""
    m = np.asarray(matrix, dtype=np.int64)
    if len(m) <= limit:
        return list(range(len(m)))
    confused = m.sum(0) + m.sum(1) - 2 * m.diagonal()
    return sorted(np.argsort(-confused, kind="stable")[:limit].tolist())


def confusion_figure(matrix: np.ndarray, names: Sequence[str], limit: int = FIGURE_CLASSES) -> np.ndarray:
    """(H, W, 3) uint8 image of the row-normalised confusion matrix, with class names and percentages."""
    m = np.asarray(matrix, dtype=np.float64)
    shown = figure_classes(m, limit)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.nan_to_num(m / m.sum(1, keepdims=True))[np.ix_(shown, shown)]  # (K, K)
    font = ImageFont.load_default(size=12)
    labels = [names[c] for c in shown]
    label_w = int(max(font.getlength(s) for s in labels)) + 8
    cell, k = 28, len(shown)
    title = "confusion matrix: share of each true class's pixels (rows) predicted as each class (columns)"
    if k < len(m):
        title += f"; the {k} most confused of {len(m)} classes"
    width = max(label_w + k * cell + 8, int(font.getlength(title)) + 16)
    top = 24 + label_w  # the title, then the column names written upwards
    image = Image.new("RGB", (width, top + k * cell + 8), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), title, fill="black", font=font)
    for j, label in enumerate(labels):
        # Column names: drawn on their own strip, turned 90 degrees, pasted above their column.
        strip = Image.new("RGB", (label_w, cell), "white")
        ImageDraw.Draw(strip).text((4, cell // 2), label, fill="black", font=font, anchor="lm")
        image.paste(strip.rotate(90, expand=True), (label_w + j * cell, 24))
    for i, label in enumerate(labels):
        y = top + i * cell
        draw.text((label_w - 4, y + cell // 2), label, fill="black", font=font, anchor="rm")
        for j in range(k):
            v = float(shares[i, j])
            shade = (round(255 - 225 * v), round(255 - 180 * v), 255)  # white -> blue
            x = label_w + j * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=shade, outline=(220, 220, 220))
            if v >= 0.005:
                draw.text((x + cell // 2, y + cell // 2), f"{round(100 * v)}", font=font, anchor="mm",
                          fill="white" if v > 0.55 else "black")  # fmt: skip
    return np.asarray(image)


def write_report(out_dir: Path, matrix: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Write the four files into out_dir; returns the figure (for TensorBoard)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = per_class(matrix, names)
    _text(out_dir / "confusion_matrix.csv", confusion_csv(matrix, names))
    _text(out_dir / "per_class.csv", per_class_csv(rows))
    _text(out_dir / "per_class.md", per_class_markdown(rows))
    figure = confusion_figure(matrix, names)
    save_image(Image.fromarray(figure), out_dir / "confusion_matrix.png")
    return figure


def multilabel_per_class(counts: np.ndarray, names: Sequence[str]) -> list[dict[str, float | int | str]]:
    """per_class()'s rows from (C, 4) counts TP, FP, FN, TN of a multi-label model."""
    c = np.asarray(counts, dtype=np.float64)
    if c.shape != (len(names), 4):
        raise ValueError(f"{len(names)} class names for multi-label counts of shape {c.shape}")
    tp, fp, fn, tn = c.T
    scored = np.maximum(c.sum(1), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, recall, precision = tp / (tp + fp + fn), tp / (tp + fn), tp / (tp + fp)
    return [
        {
            "class": name,
            "iou": float(iou[k]),
            "recall": float(recall[k]),
            "precision": float(precision[k]),
            "true_share": float((tp[k] + fn[k]) / scored[k]),
            "predicted_share": float((tp[k] + fp[k]) / scored[k]),
            "true_pixels": int(tp[k] + fn[k]),
            "predicted_pixels": int(tp[k] + fp[k]),
        }
        for k, name in enumerate(names)
    ]


def write_multilabel_report(out_dir: Path, counts: np.ndarray, names: Sequence[str]) -> None:
    """confusion_matrix.csv (a 2x2 table per class) and per_class.csv/.md of a multi-label evaluation."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = multilabel_per_class(counts, names)
    _text(out_dir / "confusion_matrix.csv", counts_csv("class", COUNT_NAMES, names, counts))
    _text(out_dir / "per_class.csv", per_class_csv(rows))
    _text(out_dir / "per_class.md", per_class_markdown(rows))


def write_scores_report(out_dir: Path, scores: object, names: Sequence[str]) -> np.ndarray | None:
    """The report of an evaluation's scores (a ConfusionMatrix or MultiLabelMetrics); the figure, if any."""
    if isinstance(scores, MultiLabelMetrics):
        write_multilabel_report(out_dir, scores.counts.cpu().numpy(), names)
        return None
    return write_report(out_dir, scores.matrix.cpu().numpy(), names)  # type: ignore[attr-defined]
