"""Training and evaluation loops. Device, AMP, channels_last, compile and DDP are decided here only."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from deeplab import data, distributed, tblog
from deeplab.checkpoint import (
    check_compatible,
    load_checkpoint,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from deeplab.errors import CheckpointError, ConfigError, DivergenceError
from deeplab.inference import predict_probs
from deeplab.loaders import batches, build_train_loader, build_val_loader
from deeplab.losses import SegmentationLoss
from deeplab.metrics import ConfusionMatrix, format_table, json_safe
from deeplab.models import build_model
from deeplab.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- device and precision


def resolve_device(name: str, local_rank: int = 0, key: str = "trainer.device") -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}: unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name} but no CUDA device is visible; use {key}=cpu or auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def resolve_amp(setting: Any, device: torch.device, key: str = "trainer.amp") -> torch.dtype | None:
    """Autocast dtype, or None for full precision. YAML reads a bare `off` as false."""
    s = str(setting).lower()
    if s == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    if s in ("off", "false", "none", "fp32", "no"):
        return None
    if s == "bf16":
        return torch.bfloat16
    if s == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"{key}=fp16 needs a CUDA device; use {key}=bf16 or off on CPU")
        return torch.float16
    raise ConfigError(f"{key}: unknown value {setting!r}; use auto, bf16, fp16 or off")


def resolve_flag(setting: Any, device: torch.device, key: str) -> bool:
    """`auto` means on with CUDA, off on CPU."""
    if str(setting).lower() == "auto":
        return device.type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise ConfigError(f"{key}: expected auto, true or false, got {setting!r}")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def normalize(
    images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool
) -> torch.Tensor:
    """(B, 3, H, W) uint8 on the device -> normalised float32; mean and std are (1, 3, 1, 1) in pixel units."""
    x = (images.float() - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def pixel_stats(values: Sequence[float], device: torch.device) -> torch.Tensor:
    return torch.tensor([float(v) * 255.0 for v in values], device=device).view(1, 3, 1, 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- evaluation

Example = tuple[np.ndarray, np.ndarray, np.ndarray]  # photo (H, W, 3) uint8, truth (H, W), prediction (H, W)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    *,
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    mean: Sequence[float],
    std: Sequence[float],
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    mode: str = "whole",
    window: int = 513,
    overlap: float = 0.33,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    num_examples: int = 0,
    progress: bool = False,
) -> tuple[ConfusionMatrix, list[Example]]:
    """Confusion matrix of `model` over whole images (summed over DDP ranks), and a few examples.

    Batches of differently sized images are padded by the loader; each such image is then run alone on
    its own pixels, so the result does not depend on the batch size.
    """
    was_training = model.training
    model.eval()
    # Whole images come in many sizes: cudnn autotuning would search again for every new shape.
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    mean_t, std_t = pixel_stats(mean, device), pixel_stats(std, device)
    cm = ConfusionMatrix(max(num_classes, 2), ignore_index=ignore_index, device=device)
    examples: list[Example] = []
    bar = tqdm(batches(loader), total=len(loader), desc="eval", disable=not progress, leave=False)
    for images, masks, sizes in bar:
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        full = tuple(images.shape[-2:])
        if all(tuple(s) == full for s in sizes.tolist()):
            parts = [(images, masks)]
        else:
            parts = [
                (images[i : i + 1, :, :h, :w], masks[i : i + 1, :h, :w])
                for i, (h, w) in enumerate(sizes.tolist())
            ]
        for imgs, truth in parts:
            x = normalize(imgs, mean_t, std_t, channels_last)
            with autocast(device, amp_dtype):
                probs = predict_probs(
                    model, x, scales=scales, flip=flip, mode=mode, window=window, overlap=overlap
                )
            pred = probs.argmax(1)  # (B, H, W)
            cm.update(pred, truth)
            for i in range(min(num_examples - len(examples), imgs.shape[0])):
                examples.append(
                    (imgs[i].permute(1, 2, 0).cpu().numpy(), truth[i].cpu().numpy(), pred[i].cpu().numpy())
                )
    cm.all_reduce()
    model.train(was_training)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    return cm, examples


# ----------------------------------------------------------------------------- training


class StopRequest:
    """Turns SIGTERM / SIGUSR1 (cluster preemption) and Ctrl-C into a checkpoint-and-exit at the next iteration."""

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                with contextlib.suppress(ValueError):  # not the main thread
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing last.pt; the run continues with trainer.resume=auto."""

    def __init__(self, signum: int, iteration: int, checkpoint: Path) -> None:
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint
        super().__init__(
            f"{signal.Signals(signum).name} received: wrote {checkpoint} at iteration {iteration}; "
            "continue with trainer.resume=auto"
        )

    @property
    def exit_code(self) -> int:
        """128 + the signal number, the shell's code for "ended by that signal": the run is not finished."""
        return 128 + self.signum


def _check_trainer(cfg: DictConfig, world_size: int) -> None:
    t = cfg.trainer
    for key in ("max_iters", "batch_size", "crop_size", "eval_interval", "ckpt_interval", "log_interval"):
        value = t[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "max_iters" else 1):
            raise ConfigError(f"trainer.{key} must be a positive integer, got {value!r}")
    if t.batch_size // world_size < 2 and cfg.model.aspp.image_pooling:
        raise ConfigError(
            f"trainer.batch_size={t.batch_size} gives {t.batch_size // world_size} image(s) per process; BatchNorm "
            "after ASPP's image pooling needs at least 2 per process in training: raise trainer.batch_size"
        )
    if t.batch_size % world_size:
        raise ConfigError(
            f"trainer.batch_size={t.batch_size} (the total over all processes) is not divisible by the "
            f"{world_size} processes; choose a multiple of {world_size}"
        )


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train the configured model; returns the last validation metrics (the dict of metrics.json)."""
    cfg_dict: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    t = cfg.trainer
    device = resolve_device(str(t.device))
    dist_info = distributed.init_distributed(device.type)
    try:
        return _train(cfg, cfg_dict, run_dir, dist_info)
    finally:
        distributed.cleanup()


def _train(
    cfg: DictConfig, cfg_dict: dict[str, Any], run_dir: Path, dist_info: distributed.DistInfo
) -> dict[str, Any]:
    t = cfg.trainer
    _check_trainer(cfg, dist_info.world_size)
    device = resolve_device(str(t.device), dist_info.local_rank)
    amp_dtype = resolve_amp(t.amp, device)
    channels_last = resolve_flag(t.channels_last, device, "trainer.channels_last")
    main = dist_info.is_main
    # Every rank works in rank 0's run dir, so resume=auto finds the same last.pt everywhere.
    run_dir = Path(distributed.broadcast_object(str(run_dir)))
    ckpt_dir = run_dir / "checkpoints"
    if main:
        check_writable(ckpt_dir)

    seed_everything(int(t.seed) + dist_info.rank)
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: autotuned kernels pay off
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # --- data: rank 0 first, so a generated dataset is written once
    num_classes = int(cfg.dataset.num_classes)
    ignore = data.ignore_index(cfg)
    names = data.class_names(cfg)
    if not main:
        distributed.barrier()
    train_set = data.build_dataset(cfg, "train", normalize=False)
    val_set = data.build_dataset(cfg, "val", normalize=False)
    if main:
        distributed.barrier()
    per_rank_batch = int(t.batch_size) // dist_info.world_size
    if len(train_set) < per_rank_batch * dist_info.world_size:
        raise ConfigError(
            f"trainer.batch_size={t.batch_size} is larger than the training set ({len(train_set)} images)"
        )

    # --- model, optimiser, schedule
    model = build_model(cfg)
    if dist_info.enabled and t.sync_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif main:
            log.warning("trainer.sync_bn: SyncBatchNorm needs CUDA; CPU processes keep per-process BatchNorm")
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    raw_model = model
    optimizer = build_optimizer(cfg, raw_model)
    scheduler = build_scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    criterion = SegmentationLoss(num_classes, ignore_index=ignore, aux_weight=float(cfg.loss.aux_weight))

    # --- resume
    start_iter, best_miou, last_metrics = 0, -1.0, None
    resume_path = _resume_path(t.resume, ckpt_dir)
    if resume_path is not None:
        ckpt = load_checkpoint(resume_path)
        check_compatible(ckpt["config"], cfg_dict, resume_path)
        if "optimizer" not in ckpt:
            raise CheckpointError(
                f"trainer.resume: {resume_path} holds weights only (best.pt is written for evaluation); "
                "resume from the run's checkpoints/last.pt"
            )
        load_model_state(raw_model, ckpt["model"], resume_path)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_iter = int(ckpt["iteration"])
        best_miou = float(ckpt.get("best_miou", -1.0))
        last_metrics = ckpt.get("metrics")
        if main:
            set_rng_state(ckpt["rng"])  # dropout continues its random stream
        else:  # only rank 0's state is saved; the others continue from a fresh, distinct seed
            seed_everything(int(t.seed) + dist_info.rank + 1000 * start_iter)
        if main:
            log.info("resumed from %s at iteration %d", resume_path, start_iter)

    model_for_step: nn.Module = raw_model
    if t.compile:
        model_for_step = torch.compile(raw_model)  # type: ignore[assignment]
    if dist_info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        model_for_step = DistributedDataParallel(model_for_step, device_ids=ids)

    pin = device.type == "cuda"
    train_loader = build_train_loader(
        train_set,
        per_rank_batch,
        int(t.num_workers),
        seed=int(t.seed),
        rank=dist_info.rank,
        world_size=dist_info.world_size,
        start_iteration=start_iter,
        pin_memory=pin,
    )
    val_loader = build_val_loader(
        val_set,
        int(cfg.eval.batch_size),
        int(t.num_workers),
        dist_info.rank,
        dist_info.world_size,
        pin,
        ignore,
    )
    mean_t, std_t = pixel_stats(cfg.dataset.mean, device), pixel_stats(cfg.dataset.std, device)
    palette = data.palette(cfg)

    writer = (
        tblog.open_writer(run_dir, purge_step=start_iter + 1 if start_iter else None)
        if main and cfg.logger.tensorboard
        else None
    )
    if main:
        n_params = sum(p.numel() for p in raw_model.parameters())
        log.info(
            "model %s/%s OS %d: %.1fM parameters | device %s | amp %s | channels_last %s | compile %s | %d process(es)",
            cfg.model.name, cfg.backbone.name, cfg.backbone.output_stride, n_params / 1e6, device,
            amp_dtype, channels_last, bool(t.compile), dist_info.world_size,
        )  # fmt: skip

    def validate(iteration: int) -> dict[str, Any]:
        distributed.broadcast_buffers(raw_model)  # every shard evaluated with the model rank 0 saves
        cm, examples = evaluate(
            raw_model, val_loader, num_classes=num_classes, ignore_index=ignore, device=device,
            mean=cfg.dataset.mean, std=cfg.dataset.std, amp_dtype=amp_dtype, channels_last=channels_last,
            num_examples=int(cfg.logger.num_images) if main else 0,
        )  # fmt: skip
        metrics = cm.compute()
        metrics["iteration"] = iteration
        if main:
            if writer is not None:
                tblog.log_val_metrics(writer, metrics, names, iteration)
                tblog.log_examples(writer, examples, palette, ignore, iteration)
            write_json(run_dir / "metrics.json", metrics)
            log.info(
                "iter %d | val pixel_acc %.4f | mean_acc %.4f | mIoU %.4f | FWIoU %.4f",
                iteration, metrics["pixel_acc"], metrics["mean_acc"], metrics["miou"], metrics["fwiou"],
            )  # fmt: skip
        return metrics

    def checkpoint(
        path: Path, iteration: int, metrics: dict[str, Any] | None, resumable: bool = True
    ) -> None:
        state = {
            "model": raw_model.state_dict(),
            "iteration": iteration,
            "best_miou": best_miou,
            "metrics": metrics,
            "config": cfg_dict,
        }
        if resumable:  # best.pt is for evaluation: weights only, a third of last.pt's size with SGD momentum
            state |= {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng_state(),
            }
        if writer is not None:
            writer.flush()  # the curves up to this checkpoint survive a crash that keeps it
        save_checkpoint(path, state)

    # --- the loop
    max_iters = int(t.max_iters)
    it = start_iter
    loss_sum = torch.zeros(3, device=device)  # total, main, aux summed since the last log (no per-step sync)
    since_log, skipped, bad_samples = 0, 0, 0
    max_skips = int(t.get("max_nonfinite_skips", 0))
    tic = time.perf_counter()
    raw_model.train()
    pbar = tqdm(total=max_iters, initial=start_iter, desc="train", disable=not main, dynamic_ncols=True)
    data_iter = batches(train_loader)
    stop_signum = 0
    with StopRequest() as stop, pbar:  # the bar is closed before any error is printed
        while it < max_iters:
            images, masks = next(data_iter)
            images = images.to(device, non_blocking=True)
            masks = masks.to(device, non_blocking=True)
            x = normalize(images, mean_t, std_t, channels_last)
            with autocast(device, amp_dtype):
                outputs = model_for_step(x)
                loss, parts = criterion(outputs, masks)
            # A sync per step, only when skipping is enabled; under DDP all ranks skip together.
            if max_skips and distributed.all_reduce_sum((~torch.isfinite(loss)).float()).item() > 0:
                skipped += 1
                if skipped > max_skips:
                    raise DivergenceError(
                        _divergence_message(it + 1, optimizer, parts, f"after skipping {max_skips} steps")
                    )
                log.warning("iter %d: non-finite loss, step skipped (%d/%d)", it + 1, skipped, max_skips)
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[0]["lr"]  # the lr this step used, before the schedule moves on
            scheduler.step()
            it += 1
            since_log += 1
            loss_sum += torch.stack(
                [loss.detach().float(), parts["main"].float(), parts.get("aux", loss.new_zeros(())).float()]
            )
            pbar.update(1)

            is_last = it == max_iters
            due_ckpt = it % int(t.ckpt_interval) == 0 or is_last
            due_eval = it % int(t.eval_interval) == 0 or is_last
            # One process stops at the next iteration; DDP ranks agree on stopping at a log boundary.
            stopping = False
            local_stop = stop.signum is not None and not dist_info.enabled
            if it % int(t.log_interval) == 0 or due_ckpt or due_eval or local_stop:
                # The one host sync, at log boundaries only: the loss sums, skipped samples and stop requests
                # of all ranks, so that every rank takes the same decisions.
                skips = getattr(train_set, "skipped", 0) + getattr(val_set, "skipped", 0)
                stats = torch.cat([loss_sum, torch.tensor([skips, float(stop.signum or 0)], device=device)])
                sums = distributed.all_reduce_sum(stats[:4].clone()).tolist()
                stop_signum = int(_all_reduce_max(stats[4:]).item())
                if not all(math.isfinite(v) for v in sums[:3]):
                    where = f"in iterations {it - since_log + 1}..{it}"
                    losses = {"main": sums[1], "aux": sums[2]}
                    raise DivergenceError(_divergence_message(it, optimizer, losses, where))
                stopping = stop_signum > 0
                due_ckpt = due_ckpt or stopping
                if main and sums[3] > bad_samples:
                    bad_samples = int(sums[3])
                    log.warning("%d bad samples skipped so far (dataset.skip_bad)", bad_samples)
                    if writer is not None:
                        writer.add_scalar("train/skipped_samples", bad_samples, it)
                if main and since_log:
                    elapsed = time.perf_counter() - tic
                    ips = since_log * int(t.batch_size) / max(elapsed, 1e-9)
                    n = since_log * dist_info.world_size  # losses summed over steps and ranks
                    mean_loss = sums[0] / n
                    pbar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}")
                    if writer is not None:
                        writer.add_scalar("train/loss", mean_loss, it)
                        writer.add_scalar("train/lr", lr, it)
                        writer.add_scalar("train/images_per_sec", ips, it)
                        if "aux" in parts:
                            writer.add_scalar("train/loss_main", sums[1] / n, it)
                            writer.add_scalar("train/loss_aux", sums[2] / n, it)
                loss_sum.zero_()
                since_log = 0
                tic = time.perf_counter()
            if due_eval:
                last_metrics = validate(it)
                if main and last_metrics["miou"] > best_miou:
                    best_miou = last_metrics["miou"]
                    checkpoint(ckpt_dir / "best.pt", it, last_metrics, resumable=False)
                raw_model.train()
                tic = time.perf_counter()
            if due_ckpt and main:
                checkpoint(ckpt_dir / "last.pt", it, last_metrics)
            if stopping:
                break
        distributed.barrier()

    if stop_signum and it < max_iters:  # a signal during the last iteration changes nothing
        interrupted = TrainingInterrupted(stop_signum, it, ckpt_dir / "last.pt")
        if main:
            if writer is not None:
                writer.close()
            log.warning("%s", interrupted)
        raise interrupted
    if last_metrics is None:  # max_iters reached before this process trained (e.g. resumed at the end)
        last_metrics = validate(it)
    if main:
        if writer is not None:
            tblog.log_hparams(writer, tblog.flat_hparams(cfg_dict), last_metrics)
            writer.close()
        print(format_table(last_metrics, names if num_classes > 1 else ["background", "foreground"]))
        print(f"checkpoints: {ckpt_dir}")
        if writer is not None:
            print(f"tensorboard --logdir {run_dir / 'tensorboard'}")
    return last_metrics


def _all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t


def check_writable(directory: Path) -> None:
    """Create directory and write a file in it: fail at the start, not at the first checkpoint hours later."""
    probe = directory / f".write_test.{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        raise ConfigError(
            f"cannot write the run's checkpoints in {directory} ({e.strerror or e}{where}); "
            "set hydra.run.dir to a writable directory"
        ) from None


def _resume_path(setting: Any, ckpt_dir: Path) -> Path | None:
    if setting in (None, False, "", "null", "none"):
        return None
    if str(setting) == "auto":
        last = ckpt_dir / "last.pt"
        return last if last.is_file() else None
    path = Path(str(setting))
    if not path.is_file():
        raise ConfigError(f"trainer.resume: no checkpoint at {path}; give a last.pt path, auto, or null")
    return path


def _divergence_message(
    iteration: int, optimizer: torch.optim.Optimizer, parts: dict[str, Any], where: str
) -> str:
    lr = optimizer.param_groups[0]["lr"]
    bad = [k for k, v in parts.items() if not math.isfinite(float(v))] or ["total"]
    return (
        f"training diverged: non-finite {'/'.join(bad)} loss {where} (iteration {iteration}, lr {lr:.3g}); "
        "the last checkpoint was kept. Lower optim.lr, add schedule.warmup_iters, or set "
        "trainer.max_nonfinite_skips to skip occasional overflow steps"
    )


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Write obj as JSON atomically; NaN (a class absent everywhere) becomes null."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(json_safe(obj), indent=2) + "\n")
    tmp.replace(path)
