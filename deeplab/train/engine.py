"""The training loop: build the parts, resume, then step, check, log, validate and save, top to bottom.

Helpers live in the file of their idea: run-time decisions in runtime.py, resume state in checkpoint.py,
collectives in distributed.py, the loggers in deeplab/train/loggers/, the evaluation loop in evaluation.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from deeplab import data
from deeplab.artifacts.card import run_card
from deeplab.artifacts.checkpoint import save_checkpoint
from deeplab.config import EarlyStopConfig, TrainConfig, train_config
from deeplab.data.loaders import batches, build_train_loader, build_val_loader, shut_down_workers
from deeplab.data.multilabel import present_absent
from deeplab.data.sampling import RareClasses, rare_classes
from deeplab.data.stats import (
    balanced_pos_weight,
    check_labels,
    label_counts,
    label_stats,
    median_frequency_weights,
)
from deeplab.errors import ConfigError, DivergenceError, UserError
from deeplab.evaluation import collapse, report
from deeplab.evaluation.loop import evaluate_as_configured
from deeplab.evaluation.metrics import format_table, write_metrics_json
from deeplab.jsonfile import write_json
from deeplab.models import build_model, parameter_count
from deeplab.models.batchnorm import freeze_batchnorm
from deeplab.models.pretrained import load_matching
from deeplab.runtime import (
    Normalizer,
    Runtime,
    configure_backends,
    distributed,
    make_runtime,
    resolve_device,
    seed_everything,
)
from deeplab.runtime.device import deterministic_error, free_memory
from deeplab.runtime.signals import StopRequest, StopSignal, TrainingInterrupted
from deeplab.train import precise_bn, rundir
from deeplab.train.ema import build_ema, restore_ema
from deeplab.train.eta import Eta
from deeplab.train.loggers import Loggers, build_loggers
from deeplab.train.loggers.records import example_strip, flat_hparams, train_scalars, val_scalars
from deeplab.train.losses import SegmentationLoss, build_criterion
from deeplab.train.optim import build_optimizer, build_scheduler
from deeplab.train.resume import (
    Resumed,
    best_so_far,
    open_resume,
    restore_training,
    resume_path,
    training_state,
)

__all__ = ["TrainingInterrupted", "train"]

log = logging.getLogger(__name__)
T = TypeVar("T")
VALIDATED_FILE = "validated.json"  # in checkpoints/: the last iteration whose validation was logged in full
PRECISE_BN_AUTO = 16  # training batches that trainer.precise_bn=auto recomputes BatchNorm statistics on
DIAGNOSIS_BATCHES = 4  # training batches that tell a statistics mismatch from a class imbalance


def train(cfg: TrainConfig | DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train the configured model in run_dir; returns the last validation metrics (those of metrics.json)."""
    cfg = train_config(cfg)
    # Stop signals are handled from here on: during start-up one ends the run at once (exit 128 + N, no
    # last.pt), in the loop at the next iteration. DataLoader workers (counting the labels starts some) are
    # started deaf to them (loaders.batches).
    with StopRequest() as stop:
        try:
            with stop.at_once():  # start-up: nothing to save yet, a stop signal ends it where it is
                dist_info = distributed.init_distributed(resolve_device(cfg.trainer.device).type)
                rt = make_runtime(cfg.trainer.device, cfg.trainer.amp, cfg.trainer.channels_last, dist_info)
                run = _setup(cfg, run_dir, rt)
            try:
                return _loop(run, stop)
            finally:
                run.close()
        except StopSignal as e:  # start-up, or the validation of a finished run: last.pt is unchanged
            interrupted = TrainingInterrupted(e.signum, 0, None)
            log.warning("%s", interrupted)
            raise interrupted from None
        finally:
            distributed.cleanup()


@dataclass(kw_only=True)
class Run:
    """The built parts of one training run (what the loop and its boundaries use)."""

    cfg: TrainConfig
    rt: Runtime
    run_dir: Path
    model: nn.Module  # the unwrapped model: what is saved, validated and loaded
    step_model: nn.Module  # the model the training step calls (compiled and/or DDP-wrapped)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: SegmentationLoss
    train_set: data.SegmentationDataset
    val_set: data.SegmentationDataset
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    normalize: Normalizer
    loggers: Loggers  # rank 0's configured loggers (none on the other ranks)
    progress: Resumed
    lock: rundir.RunDirLock | None  # rank 0's lock on the run dir
    validated: bool = False  # whether this process has validated (a resumed, finished run has not)
    saved: int = -1  # the iteration of the last last.pt this process wrote
    revalidate: bool = False  # a resumed run whose start iteration's validation was not logged in full
    ema: AveragedModel | None = None  # trainer.ema: the averaged weights (deeplab/train/ema.py)
    recomputed_at: int = (
        -1
    )  # the iteration whose BatchNorm statistics were last recomputed (trainer.precise_bn)
    started: float = field(default_factory=time.perf_counter)  # when this process's loop started

    def minutes(self) -> float:
        """Training minutes up to now: the checkpoint's, plus this process's since its loop started."""
        return (self.progress.elapsed + time.perf_counter() - self.started) / 60

    def close(self) -> None:
        """Release the run's threads and processes, also after an error: the loggers, loader workers, and
        the DDP wrapper (before its process group is destroyed, while a traceback may still hold the run)."""
        self.step_model = self.model
        self.loggers.close("failed")  # closed already, as finished or interrupted, unless an error came first
        shut_down_workers(self.train_loader)
        shut_down_workers(self.val_loader)
        if self.lock is not None:
            self.lock.release()

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def save(self, name: str, resumable: bool = True) -> None:
        """checkpoints/<name>: the resumable state (last.pt), or the weights only (best.pt)."""
        extra = (self.optimizer, self.scheduler, self.scaler) if resumable else ()
        it = self.progress.iteration
        unsent = self.loggers.unsent(it) if resumable else {}
        progress = dataclasses.replace(self.progress, elapsed=60 * self.minutes(), log_rows=unsent)
        if (
            resumable
        ):  # written before last.pt: a run resumed from an earlier one rewinds what it does not hold
            self.loggers.flush()
        state = training_state(self.model, self.cfg.model_dump(), progress, *extra)
        if self.ema is not None and resumable:
            state["ema"] = self.ema.state_dict()
        elif self.ema is not None:  # best.pt: the weights that scored better, EMA or not, and which they are
            state["model"], state["metrics"] = self.best_weights()
        state["card"] = run_card(self.cfg, self.run_dir, self.progress.iteration, state["metrics"])
        save_checkpoint(self.ckpt_dir / name, state)
        if resumable:  # what was logged up to this iteration is final: a resumed run continues after it
            self.loggers.checkpointed(it)
            self.saved = it

    def validated_at(self, iteration: int) -> None:
        """After a validation: what it logged is final once last.pt holds its iteration (sent now, not at
        the next checkpoint, which a kill may never reach), and checkpoints/validated.json records it, so that
        a run resumed from that last.pt does not validate the iteration again (and one killed while
        validating does)."""
        if not self.rt.is_main:
            return
        if self.saved == iteration:
            self.loggers.checkpointed(iteration)
        write_json(self.ckpt_dir / VALIDATED_FILE, {"iteration": iteration})

    def best_weights(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """With EMA: the state and metrics of the weights whose last validation scored the higher mIoU,
        the metrics naming them ("weights": "ema" or "model")."""
        metrics = dict(self.progress.metrics or {})
        ema = metrics.pop("ema", None)
        if self.ema is not None and ema is not None and ema["miou"] > metrics.get("miou", -1.0):
            keep = {k: metrics[k] for k in ("iteration", "num_images") if k in metrics}
            return self.ema.module.state_dict(), ema | keep | {"weights": "ema"}
        return self.model.state_dict(), metrics | {"weights": "model"}

    def statistics_batches(self, iteration: int) -> int:
        """trainer.precise_bn at this iteration: the training batches to recompute BatchNorm statistics on."""
        setting, steps = self.cfg.trainer.precise_bn, iteration * self.cfg.trainer.accumulate
        if setting == "auto":
            return PRECISE_BN_AUTO if precise_bn.is_immature(self.model, steps) else 0
        return setting

    def training_batches(self, count: int, masks: bool = False) -> list[Any]:
        """`count` batches of training images as evaluation reads them (whole, not augmented; padded with the
        mean colour to the largest of a batch), the same ones at every call: images on the device, with their
        masks when asked. Whole images, not training crops: on generated data, statistics from crops (random
        scale, padding) left a 7-point gap in pixel accuracy to each batch's own statistics, whole images 2."""
        t, d, rt = self.cfg.trainer, self.cfg.dataset, self.rt
        per_rank = max(t.batch_size // rt.dist.world_size // t.accumulate, 2)  # 2: ASPP's image pooling
        whole = data.load_split(self.cfg, "train", augment=False)
        loader = torch.utils.data.DataLoader(
            whole, batch_size=per_rank, shuffle=True, drop_last=len(whole) >= per_rank,
            generator=torch.Generator().manual_seed(t.seed + 7919),
            collate_fn=functools.partial(data.collate_eval, ignore_index=d.ignore_index, pad=d.mean_pixel()),
        )  # fmt: skip
        out = []
        for images, target, _ in itertools.islice(itertools.cycle(loader), count):
            images = images.to(rt.device)
            out.append((images, target.to(rt.device)) if masks else images)
        return out

    def recompute_statistics(self, iteration: int) -> None:
        """trainer.precise_bn: recompute the BatchNorm statistics of the model (and of the EMA weights) on
        training batches, in place, before this iteration's last.pt and validation, so that last.pt, best.pt
        and the validation agree and a resumed run continues from the same statistics. Every rank computes them
        on the same batches (SyncBatchNorm's collectives need all ranks); rank 0's are then used everywhere."""
        count = self.statistics_batches(iteration)
        if not count:
            return
        batches = self.training_batches(count)
        for model in (self.model, self.ema.module if self.ema is not None else None):
            if model is None:
                continue

            def forward(images: torch.Tensor, model: nn.Module = model) -> object:
                with self.rt.autocast():
                    return model(self.normalize(images))

            precise_bn.recompute_statistics(model, batches, forward)
            distributed.broadcast_buffers(model)
        self.recomputed_at = iteration
        if self.rt.is_main:
            log.info("iter %d: BatchNorm statistics recomputed on %d training batches (trainer.precise_bn)",
                     iteration, count)  # fmt: skip

    def validate(self, iteration: int, stop: StopRequest | None = None) -> dict[str, Any]:
        """Validation of the model with the eval.* settings, as evaluate.py scores a checkpoint (rank 0's
        BatchNorm statistics on every shard). With `stop`, a
        single process drops its validation at once on a stop signal (StopSignal); DDP ranks finish theirs,
        whose collectives need every rank, and agree on stopping at the next boundary."""
        d, main = self.cfg.dataset, self.rt.is_main
        distributed.broadcast_buffers(self.model)
        if self.ema is not None:
            distributed.broadcast_buffers(self.ema.module)  # each rank averaged its own statistics
        model, ema_model = self.model, self.ema.module if self.ema is not None else None
        abort = stop.at_once(not self.rt.dist.enabled) if stop is not None else contextlib.nullcontext()
        with abort:
            result = evaluate_as_configured(  # evaluate.py's scoring, with the same eval.* settings
                model, self.val_loader, self.rt, self.normalize, self.cfg.eval, num_classes=d.num_classes,
                ignore_index=d.ignore_index, num_examples=self.cfg.logger.num_images if main else 0,
                progress=main, multilabel=d.multilabel, threshold=d.threshold,
            )  # fmt: skip
        metrics = result.cm.compute() | {"iteration": iteration, "num_images": result.num_images}
        if self.ema is not None:  # the EMA weights, scored the same way (val/ema/*)
            abort = stop.at_once(not self.rt.dist.enabled) if stop is not None else contextlib.nullcontext()
            with abort:
                metrics["ema"] = evaluate_as_configured(
                    ema_model, self.val_loader, self.rt, self.normalize, self.cfg.eval,
                    num_classes=d.num_classes, ignore_index=d.ignore_index, progress=main,
                    multilabel=d.multilabel, threshold=d.threshold,
                ).cm.compute()  # fmt: skip
        if main:
            # confusion_matrix.csv/.png and per_class.csv/.md of this validation, next to metrics.json
            figure = report.write_scores_report(self.run_dir, result.cm, d.label_names())
            self.loggers.scalars(val_scalars(metrics, d.label_names()), iteration)
            if "ema" in metrics:
                self.loggers.scalars(val_scalars(metrics["ema"], d.label_names(), "val/ema"), iteration)
            for i, (image, truth, pred) in enumerate(result.examples):
                strip = example_strip(image, truth, pred, data.palette(d), d.ignore_index)
                self.loggers.image(f"val/example_{i}", strip, iteration)
            if figure is not None:
                self.loggers.image("val/confusion_matrix", figure, iteration)
            write_metrics_json(self.run_dir / "metrics.json", metrics)
            mismatch = None if self.recomputed_at == iteration else self.statistics_mismatch(iteration)
            remedy = collapse.STATISTICS_REMEDY if mismatch else collapse.CLASS_REMEDY
            collapsed = (
                None if d.multilabel else collapse.matrix_warning(result.cm.matrix, d.label_names(), remedy)
            )
            for warning in (collapsed, mismatch):
                if warning:
                    log.warning("iter %d, validation: %s", iteration, warning)
            log.info(
                "iter %d | val pixel_acc %.4f | mean_acc %.4f | mIoU %.4f | FWIoU %.4f",
                iteration, metrics["pixel_acc"], metrics["mean_acc"], metrics["miou"], metrics["fwiou"],
            )  # fmt: skip
        return metrics

    def statistics_mismatch(self, iteration: int) -> str | None:
        """While the running statistics are immature and not recomputed (trainer.precise_bn=0): a warning when
        the model scores much worse with them than with each batch's own on a few training batches, else None.
        (Not under DDP: it runs on rank 0 alone, and SyncBatchNorm would wait for the other ranks.)"""
        steps = iteration * self.cfg.trainer.accumulate
        if self.cfg.dataset.multilabel:  # the diagnosis compares pixel accuracy of argmax predictions
            return None
        if self.rt.dist.enabled or not precise_bn.is_immature(self.model, steps):
            return None

        def predict(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), self.rt.autocast():
                return net(self.normalize(images))["out"].argmax(1)

        batches = self.training_batches(DIAGNOSIS_BATCHES, masks=True)
        ignore = self.cfg.dataset.ignore_index
        running, batch = precise_bn.accuracy_by_statistics(self.model, batches, predict, ignore)
        if batch - running <= precise_bn.MISMATCH:
            return None
        return precise_bn.mismatch_warning(running, batch, precise_bn.initial_share(self.model, steps))


def _guarded(fn: Callable[[], T]) -> tuple[T | None, UserError | None]:
    """fn's result, or the user's mistake it raised (for every rank to raise it together)."""
    try:
        return fn(), None
    except UserError as e:
        return None, e


def _agreed(fn: Callable[[], T], run_here: bool = True) -> T | None:
    """fn() where run_here (rank 0 alone, or every rank), then every rank raises the user's mistake any rank
    met, together (None where fn did not run)."""
    result, error = _guarded(fn) if run_here else (None, None)
    distributed.raise_any(error)
    return result


def _setup(cfg: TrainConfig, run_dir: Path, rt: Runtime) -> Run:
    t, world = cfg.trainer, rt.dist.world_size
    if t.batch_size % (world * t.accumulate):
        raise ConfigError(
            f"trainer.batch_size={t.batch_size} (the total over all processes) is not divisible by the "
            f"{world} processes times trainer.accumulate={t.accumulate}; choose a multiple of {world * t.accumulate}"
        )
    per_rank = t.batch_size // world // t.accumulate  # a micro-batch
    if per_rank < 2 and cfg.model.aspp.image_pooling:
        raise ConfigError(
            f"trainer.batch_size={t.batch_size} gives {per_rank} image(s) per process and micro-batch; BatchNorm "
            "after ASPP's image pooling needs at least 2 in training: raise trainer.batch_size or lower "
            "trainer.accumulate"
        )
    # Every rank works in rank 0's run dir, so resume=auto finds the same last.pt everywhere; rank 0 alone
    # writes there, and holds its lock. A mistake on any rank stops every rank with its message.
    run_dir = Path(distributed.broadcast_object(str(run_dir)))
    lock = _agreed(lambda: rundir.claim(run_dir, t.resume), rt.is_main)
    try:
        # The checkpoint to resume from is checked first: a mismatch must not wait for (or rewrite) data.
        resume_from = resume_path(t.resume, run_dir / "checkpoints") if t.resume else None
        ckpt = _agreed(lambda: open_resume(resume_from, cfg.model_dump()), resume_from is not None)
        return _build(cfg, run_dir, rt, lock, ckpt, resume_from)
    except BaseException:
        if lock is not None:  # a failed start frees the run dir (a sweep runs its jobs in one process)
            lock.release()
        raise


def _build(
    cfg: TrainConfig,
    run_dir: Path,
    rt: Runtime,
    lock: rundir.RunDirLock | None,
    ckpt: dict[str, Any] | None,
    resume_from: Path | None,
) -> Run:
    """Everything a run needs, once its run dir is claimed: data, model, resumed state, loaders, logging."""
    t, d, world = cfg.trainer, cfg.dataset, rt.dist.world_size
    per_rank = t.batch_size // world // t.accumulate  # the loader's batch: one micro-batch
    seed_everything(t.seed + rt.dist.rank)
    configure_backends(rt.device, t.deterministic)

    datasets, error = _guarded(lambda: _datasets(cfg, check=True)) if rt.is_main else (None, None)
    distributed.barrier()  # rank 0 first, so that a generated dataset is written once
    if not rt.is_main:
        datasets, error = _guarded(lambda: _datasets(cfg, check=False))
    distributed.raise_any(error)
    train_set, val_set = datasets  # type: ignore[misc]

    parts = _agreed(lambda: _model_and_state(cfg, rt, run_dir / "checkpoints", ckpt, resume_from))
    model, optimizer, scheduler, scaler, progress, ema = parts  # type: ignore[misc]
    step_model: nn.Module = torch.compile(model) if t.compile else model  # type: ignore[assignment]
    if rt.dist.enabled:
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        step_model = DistributedDataParallel(step_model, device_ids=ids)
    pin = rt.device.type == "cuda"
    rare = _agreed(lambda: _rare_classes(cfg, train_set), rt.is_main)
    train_loader = build_train_loader(
        train_set, per_rank, t.num_workers, seed=t.seed, rank=rt.dist.rank, world_size=world,
        start_iteration=progress.iteration * t.accumulate, pin_memory=pin, rare=distributed.broadcast_object(rare),
    )  # fmt: skip
    val_loader = build_val_loader(
        val_set, cfg.eval.batch_size, t.num_workers, rt.dist.rank, world, pin, d.ignore_index, d.mean_pixel()
    )
    revalidate = _revalidates(cfg, run_dir, progress.iteration)
    loggers = _agreed(lambda: build_loggers(cfg, run_dir, progress.iteration, rt.is_main, revalidate))
    loggers.recover(progress.log_rows, progress.iteration)
    if rt.is_main:
        log.info(
            "model %s/%s OS %d: %.1fM parameters | device %s | amp %s | channels_last %s | compile %s | "
            "%d process(es)", cfg.model.name, cfg.backbone.name, cfg.backbone.output_stride,
            sum(p.numel() for p in model.parameters()) / 1e6, rt.device, rt.amp_dtype, rt.channels_last,
            t.compile, world,
        )  # fmt: skip
    # loss.class_weights (softmax) or loss.pos_weight (multi-label), auto resolved from the training masks
    weights = _agreed(lambda: _class_weights(cfg, train_set, run_dir), rt.is_main)
    weights = distributed.broadcast_object(weights)
    resolved = torch.tensor(weights, dtype=torch.float32, device=rt.device) if weights is not None else None
    class_weights, pos_weight = (None, resolved) if d.multilabel else (resolved, None)
    criterion = build_criterion(
        cfg.loss, d.num_classes, d.ignore_index, class_weights, d.multilabel, pos_weight
    )
    return Run(
        cfg=cfg, rt=rt, run_dir=run_dir, model=model, step_model=step_model, optimizer=optimizer,
        scheduler=scheduler, scaler=scaler, criterion=criterion, train_set=train_set, val_set=val_set,
        train_loader=train_loader, val_loader=val_loader, normalize=rt.normalizer(d.mean, d.std),
        loggers=loggers, progress=progress, lock=lock, ema=ema, revalidate=revalidate,
    )  # fmt: skip


# Bytes per parameter a training run holds at least: float32 weights, gradients and SGD momentum, and a copy
# (the EMA weights, or the state dict being written to last.pt).
TRAINING_BYTES_PER_PARAMETER = 16


def check_fits(cfg: TrainConfig, device: torch.device) -> None:
    """A model whose weights, gradients and optimiser state alone exceed the device's free memory is one
    ConfigError giving its size, before anything is allocated (activations come on top)."""
    free = free_memory(device)
    if free is None:
        return
    params = parameter_count(cfg)
    need = TRAINING_BYTES_PER_PARAMETER * params
    if need > free:
        raise ConfigError(
            f"the model has {params / 1e6:,.1f}M parameters: its weights, gradients and optimiser state need "
            f"{need / 2**30:.1f} GB, more than the {free / 2**30:.1f} GB free on {device}; reduce model.aspp.channels, "
            "model.decoder.channels or the backbone"
        )


def _revalidates(cfg: TrainConfig, run_dir: Path, start: int) -> bool:
    """Whether a run resumed at `start` validates that iteration again: always at the end (the data may lie
    elsewhere now, and the metrics it reports are those of the files it was given), and at a validation
    iteration whose validation was not logged in full (killed while validating, or before sending it)."""
    t = cfg.trainer
    if start == 0:
        return False
    if start >= t.max_iters:
        return True
    if start % t.eval_interval:
        return False
    try:
        done = int(json.loads((run_dir / "checkpoints" / VALIDATED_FILE).read_text())["iteration"])
    except (OSError, ValueError, KeyError, TypeError):
        done = -1
    return done < start


def _datasets(cfg: TrainConfig, check: bool) -> tuple[data.SegmentationDataset, data.SegmentationDataset]:
    """Both splits; with `check` (rank 0), the training masks' labels are counted and checked first."""
    d, t = cfg.dataset, cfg.trainer
    train_set, val_set = data.build_dataset(cfg, "train"), data.build_dataset(cfg, "val")
    if len(train_set) < t.batch_size:
        raise ConfigError(
            f"trainer.batch_size={t.batch_size} is larger than the training set ({len(train_set)} images)"
        )
    if check and d.check_labels:
        counts = label_counts(train_set, Path(cfg.paths.cache_dir), t.num_workers)
        check_labels(
            counts, d, len(train_set), f"{d.name} {d.train_split if hasattr(d, 'train_split') else 'train'}"
        )
        names = d.label_names()
        if d.multilabel:  # the share of each class's scored pixels where it is present
            present, absent = present_absent(counts, len(names))
            shares = present / np.maximum(present + absent, 1)
        else:
            shares = counts[: len(names)] / max(int(counts.sum()), 1)
        what = "pixels where each class is present" if d.multilabel else "pixels per class"
        log.info("training %s: %s", what, ", ".join(f"{n} {s:.1%}" for n, s in zip(names, shares)))
    return train_set, val_set


def _class_weights(
    cfg: TrainConfig, train_set: data.SegmentationDataset, run_dir: Path
) -> list[float] | None:
    """loss.class_weights as a list (a multi-label model: loss.pos_weight); auto: median-frequency weights from
    the training masks' pixel counts (pos_weight: sqrt(absent / present pixels) per class), computed once and
    kept in the run dir (class_weights.json, pos_weight.json), so that a resumed run uses the same ones."""
    loss, d = cfg.loss, cfg.dataset
    key = "pos_weight" if d.multilabel else "class_weights"
    setting = getattr(loss, key, None)  # None too for the losses without the key
    if setting is None or isinstance(setting, list):
        return None if setting is None else list(setting)
    path = run_dir / f"{key}.json"
    names = d.label_names()
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("classes") == names:
            return [float(w) for w in saved["weights"]]
    counts = label_counts(train_set, Path(cfg.paths.cache_dir), cfg.trainer.num_workers)
    if d.multilabel:
        present, absent = present_absent(counts, len(names))
        weights = balanced_pos_weight(present.tolist(), absent.tolist())
        record = {"present": present.tolist(), "absent": absent.tolist()}
    else:
        weights = median_frequency_weights(counts[: len(names)].tolist())
        record = {"pixels": counts[: len(names)].tolist()}
    write_json(path, {"classes": names, "weights": weights, **record})
    how = "sqrt(absent / present pixels)" if d.multilabel else "median frequency"
    log.info(
        "loss.%s (%s, %s): %s", key, how, path, ", ".join(f"{n} {w:.3g}" for n, w in zip(names, weights))
    )
    return weights


def _rare_classes(cfg: TrainConfig, train_set: data.SegmentationDataset) -> RareClasses | None:
    """dataset.sampler=rare_class: the class probabilities and the images holding each class, from the
    training masks' cached label statistics (logged)."""
    d = cfg.dataset
    if d.sampler != "rare_class":
        return None
    names = d.label_names()
    stats = label_stats(train_set, Path(cfg.paths.cache_dir), cfg.trainer.num_workers)
    rare = rare_classes(stats.counts[: len(names)].tolist(), stats.presence, d.sampler_temperature)
    log.info(
        "dataset.sampler=rare_class (T=%g): a class drawn with probability %s, then an image holding it",
        d.sampler_temperature, ", ".join(f"{n} {p:.3g}" for n, p in zip(names, rare.probabilities)),
    )  # fmt: skip
    return rare


def _model_and_state(
    cfg: TrainConfig, rt: Runtime, ckpt_dir: Path, ckpt: dict[str, Any] | None, path: Path | None
) -> tuple[Any, ...]:
    """The model on its device, optimiser, schedule and GradScaler, and where training continues from."""
    t = cfg.trainer
    check_fits(cfg, rt.device)
    model = build_model(cfg)
    if cfg.model.init_from is not None and ckpt is None:  # a resumed run continues from its own last.pt
        skipped = load_matching(model, cfg.model.init_from)
        if rt.is_main:
            log.info(
                "initialised from %s; not loaded (initialised afresh): %s",
                cfg.model.init_from, ", ".join(skipped) if skipped else "nothing",
            )  # fmt: skip
    if t.freeze_bn:
        frozen = freeze_batchnorm(model)
        if rt.is_main:
            log.info(
                "trainer.freeze_bn: %d BatchNorm layers frozen (statistics and affine parameters)", frozen
            )
    model.backbone.set_activation_checkpointing(t.activation_checkpointing)
    if rt.dist.enabled and t.sync_bn:
        if rt.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif rt.is_main:
            log.warning("trainer.sync_bn: SyncBatchNorm needs CUDA; CPU processes keep per-process BatchNorm")
    rt.place(model)
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_scheduler(cfg.schedule, t.max_iters, optimizer)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
    ema = build_ema(model, t.ema.decay, t.ema.warmup)
    config = cfg.model_dump()
    progress = Resumed()
    if ckpt is not None and path is not None:
        progress = restore_training(ckpt, path, model, optimizer, scheduler, scaler, restore_rng=rt.is_main)
        restore_ema(ema, ckpt, path)
        if not rt.is_main:  # only rank 0's RNG state is saved; the others continue from a distinct seed
            seed_everything(t.seed + rt.dist.rank + 1000 * progress.iteration)
        if rt.is_main:
            log.info("resumed from %s at iteration %d", path, progress.iteration)
            before = int(ckpt["config"].get("trainer", {}).get("accumulate", 1))
            if before != cfg.trainer.accumulate:
                log.warning(
                    "trainer.accumulate: %d micro-batches per step in %s, %d now: the steps keep their batch of "
                    "%d images, but BatchNorm now sees micro-batches of %d",
                    before, path, cfg.trainer.accumulate, cfg.trainer.batch_size,
                    cfg.trainer.batch_size // rt.dist.world_size // cfg.trainer.accumulate,
                )  # fmt: skip
    # A new best.pt must beat the one in the run dir, also one written before the last last.pt.
    progress.best_miou = max(progress.best_miou, best_so_far(ckpt_dir, config))
    return model, optimizer, scheduler, scaler, progress, ema


class LossSums:
    """Losses summed on the device since the last log boundary: no host sync per step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.steps = 0
        self.reset()

    def reset(self) -> None:
        self.sums = {k: torch.zeros((), device=self.device) for k in ("loss", "main", "aux")}
        self.steps = 0

    def add(self, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        self.sums["loss"] += loss.detach().float()
        self.sums["main"] += parts["main"].float()
        if "aux" in parts:
            self.sums["aux"] += parts["aux"].float()
        self.steps += 1


@dataclass
class LoopState:
    """What the loop carries from one iteration to the next, on one rank."""

    sums: LossSums  # losses since the last log boundary, on the device
    watch: collapse.CollapseWatch  # predicted pixels per class, for the first log boundaries
    data_iter: Iterator[Any]
    bar: tqdm
    # a data error of this rank, raised with the others' at the next boundary
    pending: UserError | None = None
    skipped_steps: int = 0  # non-finite steps skipped (trainer.max_nonfinite_skips)
    bad_samples: int = 0  # unreadable samples skipped so far, over all ranks (dataset.skip_bad)
    stop_signum: int = 0  # the stop signal any rank received, agreed at a log boundary
    lr: float = 0.0  # the lr of the last step
    tic: float = field(default_factory=time.perf_counter)  # the start of the current log interval
    eta: Eta = field(default_factory=Eta)  # the time left, from a smoothed time per iteration


def progress_bar(total: int, initial: int, disable: bool = False) -> tqdm:
    """The training bar: iterations, elapsed time and rate; the time left is the postfix's eta (smoothed over
    log intervals, validation left out), not tqdm's own estimate beside it, which would disagree."""
    bar_format = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"
    return tqdm(
        total=total, initial=initial, desc="train", disable=disable, dynamic_ncols=True, bar_format=bar_format
    )


def _loop(run: Run, stop: StopRequest) -> dict[str, Any]:
    rt, t, d = run.rt, run.cfg.trainer, run.cfg.dataset
    main = rt.is_main
    it = start = run.progress.iteration
    run.model.train()
    run.started = time.perf_counter()
    state = LoopState(
        sums=LossSums(rt.device),
        # a multi-label model predicts each class on its own: no one class can take the others' pixels
        watch=collapse.CollapseWatch(
            d.num_classes,
            d.ignore_index,
            rt.device,
            boundaries=0 if d.multilabel else collapse.CHECKED_BOUNDARIES,
        ),  # fmt: skip
        data_iter=batches(run.train_loader),
        bar=progress_bar(t.max_iters, it, disable=not main),
    )
    if run.progress.early_stop["stopped"]:  # resumed after it had ended early: nothing left to train
        log.warning(
            "the run ended early at iteration %d (%s); nothing to resume",
            it,
            run.progress.early_stop["stopped"],
        )
        state.bar.close()
        return _finish(run, it, 0, stop)
    with state.bar:  # the bar is closed before any error is printed
        if run.revalidate and it < t.max_iters:  # the validation of the checkpoint's iteration was not logged
            run.saved = it  # last.pt holds it
            _validate(run, it, stop)
        while it < t.max_iters:
            try:
                loss, parts, finite = _forward_backward(run, state)
            except RuntimeError as e:
                unavailable = deterministic_error(e, rt.device)
                if unavailable is not None:
                    raise ConfigError(unavailable) from None
                # A worker ended by a signal (e.g. killed by the scheduler) after a stop signal: the stop it
                # follows, at the last finished iteration. (Under DDP the other ranks need this one: an error.)
                if stop.signum is None or rt.dist.enabled or "DataLoader worker" not in str(e):
                    raise
                saved = run.ckpt_dir / "last.pt" if it > start else None
                if main and saved is not None:
                    run.save("last.pt")
                raise _interrupted(run, it, stop.signum, saved) from e
            if not finite:
                state.skipped_steps += 1
                _skip_or_stop(run, it + 1, parts, state.skipped_steps)
                run.optimizer.zero_grad(set_to_none=True)
                continue
            run.scaler.step(run.optimizer)  # once per optimizer step, after all its micro-batches
            run.scaler.update()
            run.optimizer.zero_grad(set_to_none=True)
            if run.ema is not None:
                run.ema.update_parameters(run.model)
            state.lr = run.optimizer.param_groups[0][
                "lr"
            ]  # the lr this step used, before the schedule moves on
            run.scheduler.step()
            it += 1
            state.sums.add(loss, parts)
            state.bar.update(1)

            due_ckpt = it % t.ckpt_interval == 0 or it == t.max_iters
            due_eval = it % t.eval_interval == 0 or it == t.max_iters
            # One process stops at the next iteration; DDP ranks agree on stopping at a log boundary.
            local_stop = stop.signum is not None and not rt.dist.enabled
            if it % t.log_interval == 0 or due_ckpt or due_eval or local_stop:
                _boundary(run, it, state, stop)
            run.progress.iteration = it
            if due_eval:  # before last.pt, which then holds the statistics validated (trainer.precise_bn)
                run.recompute_statistics(it)
            # last.pt first: a failure while validating (a bad image, out of memory) loses nothing.
            if (due_ckpt or state.stop_signum) and main:
                run.save("last.pt")
            if state.stop_signum:  # preemption: exit now; the resumed run validates at its next interval
                break
            if due_eval:
                _validate(run, it, stop)
                state.tic = time.perf_counter()  # the interval's time leaves validation out
                if run.progress.early_stop["stopped"] and it < t.max_iters:
                    if main:  # last.pt records that the run ended: a resume finishes instead of training on
                        run.save("last.pt")
                    log.warning(
                        "iteration %d: %s; best.pt holds the best weights",
                        it,
                        run.progress.early_stop["stopped"],
                    )
                    break
        distributed.barrier()
    return _finish(run, it, state.stop_signum, stop)


def _validate(run: Run, it: int, stop: StopRequest) -> None:
    """Validate at iteration `it`, keep best.pt, and make what was logged final (Run.validated_at)."""
    main = run.rt.is_main
    try:
        run.progress.metrics = run.validate(it, stop)
    except StopSignal as e:  # validation dropped: save this iteration (unless just done), exit
        if main and run.saved != it:
            run.save("last.pt")
        raise _interrupted(run, it, e.signum, run.ckpt_dir / "last.pt") from None
    run.validated = True
    score = max(run.progress.metrics["miou"], run.progress.metrics.get("ema", {}).get("miou", -1.0))
    if main and score > run.progress.best_miou:
        run.progress.best_miou = score
        run.save("best.pt", resumable=False)
    early_stop(run.progress.early_stop, run.cfg.trainer.early_stop, score, it)
    run.validated_at(it)
    run.model.train()


def early_stop(state: dict[str, Any], cfg: EarlyStopConfig, score: float, iteration: int) -> None:
    """trainer.early_stop after a validation scoring `score`: a rise of at least min_delta over the best that
    counted resets the count, anything less adds one; at `patience` the reason is set in state["stopped"]. Every
    rank computes it from the same all-reduced metrics, so all stop together."""
    if cfg.patience is None:
        return
    if score >= state["best"] + cfg.min_delta or state["best"] < 0:
        state.update(best=score, iteration=iteration, stale=0)
        return
    state["stale"] += 1
    if state["stale"] >= cfg.patience:
        state["stopped"] = (
            f"early stop (trainer.early_stop.patience={cfg.patience}): {state['stale']} validations without a val "
            f"mIoU rise of {cfg.min_delta:g} over {100 * state['best']:.2f} at iteration {state['iteration']}"
        )


def _forward_backward(run: Run, state: LoopState) -> tuple[torch.Tensor, dict[str, torch.Tensor], bool]:
    """Forward and backward passes of the trainer.accumulate micro-batches of one optimizer step; under DDP
    only the last backward all-reduces (no_sync). Each micro-batch's loss is weighted by its share of the
    step's labelled pixels, so that for a per-pixel mean loss (cross entropy) the gradient is the whole
    batch's. Returns the step's loss and its parts (detached), and whether the losses
    were finite (checked, on every rank, only with trainer.max_nonfinite_skips: else a non-finite loss is
    caught at the next log boundary)."""
    rt, t = run.rt, run.cfg.trainer
    micro_batches = []
    for _ in range(t.accumulate):  # uint8 images and masks of the whole step: small next to activations
        images, masks, state.pending = _next_batch(run, state.data_iter, state.pending)
        micro_batches.append((images, masks))
    labelled = torch.stack([(m != run.cfg.dataset.ignore_index).sum() for _, m in micro_batches]).float()
    shares = labelled / labelled.sum() if t.accumulate > 1 else torch.ones(1, device=rt.device)
    if t.accumulate > 1 and not labelled.sum():  # nothing labelled (blank batches): equal shares
        shares = torch.full_like(labelled, 1.0 / t.accumulate)
    total: torch.Tensor = torch.zeros((), device=rt.device)
    sums: dict[str, torch.Tensor] = {}
    for i, (images, masks) in enumerate(micro_batches):
        last = i == t.accumulate - 1
        no_sync = run.step_model.no_sync if rt.dist.enabled and not last else contextlib.nullcontext
        with no_sync():  # type: ignore[operator]
            with rt.autocast():
                outputs = run.step_model(run.normalize(images))
                loss, parts = run.criterion(outputs, masks)
            state.watch.add(outputs["out"], masks)  # predicted pixels per class, until the checks are done
            del outputs  # (B, C, H, W) logits: not kept through the backward pass and the next forward
            # A sync per step only when skipping is enabled; under DDP all ranks skip together.
            if t.max_nonfinite_skips and not _finite_everywhere(loss, rt.device):
                return loss.detach(), parts, False
            run.scaler.scale(loss * shares[i]).backward()
        total = total + loss.detach() * shares[i]
        for k, v in parts.items():
            sums[k] = sums.get(k, 0) + v.detach() * shares[i]
    return total, sums, True


def _next_batch(
    run: Run, data_iter: Iterator[Any], pending: UserError | None
) -> tuple[torch.Tensor, torch.Tensor, UserError | None]:
    """The next batch on the device. Under DDP a data error is kept until the next log boundary, where every
    rank raises it (a blank batch, all pixels ignored, keeps this rank in step until then); a single
    process raises it at once."""
    rt, t = run.rt, run.cfg.trainer
    if pending is None:
        try:
            images, masks = next(data_iter)
            return images.to(rt.device, non_blocking=True), masks.to(rt.device, non_blocking=True), None
        except UserError as e:
            if not rt.dist.enabled:
                raise
            pending = e
    n = t.batch_size // rt.dist.world_size // t.accumulate  # a micro-batch
    height, width = t.crop()
    images = torch.zeros((n, run.cfg.dataset.in_channels, height, width), dtype=torch.uint8, device=rt.device)
    d = run.cfg.dataset
    classes = (d.num_classes,) if d.multilabel else ()  # multi-label masks are (n, C, H, W)
    masks = torch.full((n, *classes, height, width), d.ignore_index, device=rt.device)
    return images, masks, pending


def _finite_everywhere(loss: torch.Tensor, device: torch.device) -> bool:
    return distributed.sum_over_ranks({"nonfinite": ~torch.isfinite(loss)}, device)["nonfinite"] == 0


def _skip_or_stop(run: Run, iteration: int, parts: dict[str, torch.Tensor], skipped: int) -> None:
    """trainer.max_nonfinite_skips: warn about a skipped step, or stop when too many were skipped."""
    allowed = run.cfg.trainer.max_nonfinite_skips
    if skipped > allowed:
        raise DivergenceError(_divergence(iteration, run, parts, f"after skipping {allowed} steps"))
    log.warning("iter %d: non-finite loss, step skipped (%d/%d)", iteration, skipped, allowed)


def _boundary(run: Run, it: int, state: LoopState, stop: StopRequest) -> None:
    """A log boundary: the one host sync (named sums of every rank, so that every rank takes the same
    decisions), the divergence check, logging. Sets the stop signal any rank received and the number of bad
    samples skipped so far, and starts the next interval."""
    rt, t = run.rt, run.cfg.trainer
    sums, watch, pending, bad_samples = state.sums, state.watch, state.pending, state.bad_samples
    seconds = time.perf_counter() - state.tic
    skips = run.train_set.skipped + run.val_set.skipped
    errors = float(pending is not None)
    named = sums.sums | watch.named()
    total = distributed.sum_over_ranks(named | {"bad_samples": float(skips), "errors": errors}, rt.device)
    if total["errors"]:
        distributed.raise_any(pending)
    warning = watch.boundary(total, run.cfg.dataset.label_names())
    if warning and rt.is_main:
        log.warning("iter %d, training batches: %s", it, warning)
    state.stop_signum = distributed.max_over_ranks(stop.signum or 0, rt.device)
    losses = ("loss", "main", "aux") if run.cfg.model.aux_head else ("loss", "main")
    if not all(math.isfinite(total[k]) for k in losses):
        where = f"in iterations {it - sums.steps + 1}..{it}"
        raise DivergenceError(_divergence(it, run, {k: total[k] for k in losses[1:]}, where))
    if rt.is_main and total["bad_samples"] > bad_samples:
        bad_samples = int(total["bad_samples"])
        log.warning("%d bad samples skipped so far (dataset.skip_bad)", bad_samples)
        run.loggers.scalars({"train/skipped_samples": bad_samples}, it)
    if rt.is_main and sums.steps:
        n = sums.steps * rt.dist.world_size  # losses summed over steps and ranks
        means = {k: total[k] / n for k in (losses if run.cfg.model.aux_head else ("loss",))}
        ips = sums.steps * t.batch_size / max(seconds, 1e-9)
        state.eta.update(seconds, sums.steps)
        eta = state.eta.left(t.max_iters - it)
        state.bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{state.lr:.2e}", img_s=f"{ips:.1f}", eta=eta)
        # train.log keeps the loss history too (the bar is overwritten in place)
        log.info("iter %d | loss %.4f | lr %.3g | %.1f img/s | eta %s", it, means["loss"], state.lr, ips, eta)
        run.loggers.scalars(train_scalars(means, state.lr, ips) | {"train/minutes": run.minutes()}, it)
    sums.reset()
    state.bad_samples = bad_samples
    state.tic = time.perf_counter()


def _interrupted(run: Run, it: int, signum: int, checkpoint: Path | None) -> TrainingInterrupted:
    """The exception that ends a run stopped by a signal, logged (checkpoint: the last.pt written for it)."""
    interrupted = TrainingInterrupted(signum, it, checkpoint)
    if run.rt.is_main:
        run.loggers.close("interrupted")
        log.warning("%s", interrupted)
    return interrupted


def _finish(run: Run, it: int, stop_signum: int, stop: StopRequest | None = None) -> dict[str, Any]:
    """After the loop: raise TrainingInterrupted on a stop signal, else log the hyperparameters and report."""
    main, names = run.rt.is_main, run.cfg.dataset.label_names()
    if stop_signum and it < run.cfg.trainer.max_iters:  # a signal during the last iteration changes nothing
        raise _interrupted(run, it, stop_signum, run.ckpt_dir / "last.pt")
    # A run resumed at its end validates again: the data may lie elsewhere now, and the metrics it reports
    # and writes are those of the files it was given.
    # A signal during that validation drops it; one received during the last iteration does not.
    final_stop = stop if stop is not None and stop.signum is None else None
    if not run.validated:
        run.progress.metrics = run.validate(it, final_stop)
        run.saved = (
            it  # last.pt holds the last iteration (written by the loop, or the run resumed at its end)
        )
        run.validated_at(it)
    metrics = run.progress.metrics
    if main:
        run.loggers.hparams(flat_hparams(run.cfg.model_dump()), metrics)
        run.loggers.artifact("metrics.json", run.run_dir / "metrics.json")
        card = run_card(run.cfg, run.run_dir, it, metrics)
        run.loggers.artifact("model_card.json", card)
        run.loggers.close()
        print(format_table(metrics, names, _table_title(run, it, metrics)))
        print(f"checkpoints: {run.ckpt_dir}")
        if run.cfg.logger.tensorboard is not None:
            print(f"tensorboard --logdir {run.run_dir / 'tensorboard'}")
    if run.progress.early_stop["stopped"]:  # train.py writes it into status.json
        return metrics | {"stopped_early": run.progress.early_stop["stopped"]}
    return metrics


def _table_title(run: Run, iteration: int, metrics: dict[str, Any]) -> str:
    """Which weights the final table scores: last.pt at its iteration, and whether best.pt differs."""
    title = f"validation at iteration {iteration} of {run.cfg.trainer.max_iters}: {run.ckpt_dir / 'last.pt'}"
    best = run.progress.best_miou
    if best > metrics["miou"] and (run.ckpt_dir / "best.pt").is_file():
        title += f" (best.pt has a higher mIoU, {100 * best:.2f})"
    return title


def _divergence(iteration: int, run: Run, losses: dict[str, Any], where: str) -> str:
    lr = run.optimizer.param_groups[0]["lr"]
    bad = [k for k, v in losses.items() if not math.isfinite(float(v))] or ["total"]
    return (
        f"training diverged: non-finite {'/'.join(bad)} loss {where} (iteration {iteration}, lr {lr:.3g}); "
        "the last checkpoint was kept. Lower optim.lr, add schedule.warmup_iters, or set "
        "trainer.max_nonfinite_skips to skip occasional overflow steps"
    )
