"""Training-step throughput: images/s, peak memory, FLOPs and MFU of DeepLabv3/v3+ next to torchvision.

One step is what deeplab.train.engine does per iteration, with the batch already on the device: uint8 images
normalised on the device, forward under autocast, the project's loss (cross-entropy, ignore 255), backward,
SGD (momentum 0.9, weight decay 1e-4, fused on CUDA) and the poly schedule. torchvision's
deeplabv3_resnet50/101 (weights=None, aux_loss=False) runs the same step on the same input as the peer.

    python benchmarks/train_step.py                                  # CUDA: batch 16, crop 513, every model
    python benchmarks/train_step.py --models v3p_r101_os16 --modes bf16+cl+compile
    python benchmarks/train_step.py --device cpu --batch 2 --crop 129

Models: v3|v3p _ r50|r101 _ os16|os8 are the paper recipe (multi-grid 1,2,4; ASPP 6,12,18 doubled at OS 8;
no extra head conv); tvlike_r50/r101 is the project configured as torchvision's deeplabv3 (OS 8 with
torchvision's dilation, ASPP 12,24,36, dropout 0.5, the extra 3x3 head conv), the like-for-like config;
tv_r50/r101 is torchvision's model, added for each backbone in use (--no-peer leaves it out).
Modes join fp32|bf16 with +cl (channels_last) and +compile (torch.compile of the model, as the engine does).

Each model runs `--warmup` steps, then the models of one mode take turns for `--rounds` rounds of `--iters`
steps; a figure is the median over rounds and a ratio ours/peer the median of the per-round ratios, so a
change of load during the run does not bias it. FLOPs are counted by FlopCounterMode on the "meta" device
(forward + backward of the real step, convolutions and matmuls only); MFU is achieved FLOP/s over the dense
matmul peak measured in the same run (bf16 on CUDA; fp32 on the CPU, said so in the output).
"""

from __future__ import annotations

import argparse
import gc
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from common import (
    OUR_MODELS,
    compose_config,
    describe_machine,
    interleaved_rounds,
    matmul_peak_tflops,
    median,
    model_overrides,
    paired_ratio,
    random_batch,
    resolve_device,
    synchronize,
)
from omegaconf import DictConfig
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.segmentation import deeplabv3_resnet50, deeplabv3_resnet101

from deeplab.config import train_config
from deeplab.models import build_model
from deeplab.runtime import Normalizer, autocast
from deeplab.train.losses import SegmentationLoss
from deeplab.train.optim import build_optimizer, build_scheduler

NUM_CLASSES = 21
IGNORE = 255
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

PEERS: dict[str, Callable[..., nn.Module]] = {"tv_r50": deeplabv3_resnet50, "tv_r101": deeplabv3_resnet101}


def backbone_of(name: str) -> str:
    """r50 or r101, the second field of v3_r50_os8 or the last of tvlike_r50 / tv_r50."""
    return name.split("_")[1] if name.count("_") == 2 else name.split("_")[-1]


def peer_of(name: str) -> str:
    return f"tv_{backbone_of(name)}"


def expand_models(text: str, peers: bool) -> list[str]:
    """The --models list with `all` expanded and, unless peers is false, torchvision's model per backbone."""
    names: list[str] = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        if item == "all":
            names += OUR_MODELS
        elif item in PEERS:
            names.append(item)
        else:
            model_overrides(item)  # validates the name
            names.append(item)
    if peers:
        names += [peer_of(n) for n in names if n not in PEERS]
    return list(dict.fromkeys(names))  # unique, in order


def build(name: str) -> tuple[nn.Module, DictConfig]:
    """The model (on the CPU, random weights) and the config its optimiser and schedule are built from."""
    if name in PEERS:
        model = PEERS[name](weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=False)
        return model, compose_config()  # the same optimiser, schedule and loss config as ours
    cfg = compose_config(model_overrides(name))
    return build_model(cfg), cfg


# ----------------------------------------------------------------------------- modes


@dataclass(frozen=True)
class Mode:
    """A precision (fp32, or bf16 autocast) with channels_last and torch.compile switches."""

    name: str
    amp: torch.dtype | None
    channels_last: bool
    compile: bool


def parse_mode(text: str) -> Mode:
    parts = text.split("+")
    precision, flags = parts[0], set(parts[1:])
    if precision not in ("fp32", "bf16") or not flags <= {"cl", "compile"} or len(flags) != len(parts) - 1:
        raise SystemExit(
            f"--modes: unknown mode {text!r}; use fp32|bf16 with +cl and/or +compile, e.g. bf16+cl"
        )
    amp = torch.bfloat16 if precision == "bf16" else None
    return Mode(text, amp, "cl" in flags, "compile" in flags)


def default_modes(device: torch.device, fp32_peak: float, bf16_peak: float) -> tuple[list[str], list[str]]:
    """(modes, notes): all four on CUDA; on the CPU compile is left out, and bf16 too without native bf16."""
    if device.type == "cuda":
        return ["fp32", "bf16", "bf16+cl", "bf16+cl+compile"], []
    notes = ["bf16+cl+compile left out on the CPU (compiling takes minutes on a few cores); ask with --modes"]
    if bf16_peak < fp32_peak / 2:
        notes.append(
            f"bf16 modes left out: this CPU has no native bf16 matmul ({bf16_peak * 1e3:.2f} GFLOP/s bf16 vs "
            f"{fp32_peak * 1e3:.1f} fp32); ask with --modes bf16"
        )
        return ["fp32"], notes
    return ["fp32", "bf16", "bf16+cl"], notes


# ----------------------------------------------------------------------------- FLOPs


def step_flops(name: str, batch: int, crop: int) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs per image of the training step, counted on the meta device."""
    with torch.device("meta"):
        model, _ = build(name)
    model.train()
    criterion = SegmentationLoss(NUM_CLASSES, IGNORE)
    n = 2  # BatchNorm after image pooling needs two values per channel in training
    x = torch.zeros(n, 3, crop, crop, device="meta")
    target = torch.zeros(n, crop, crop, dtype=torch.int64, device="meta")
    forward, total = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with total:
        with forward:
            loss, _ = criterion(model(x), target)
        loss.backward()
    return forward.get_total_flops() / n, total.get_total_flops() / n


# ----------------------------------------------------------------------------- the step


@dataclass
class Runner:
    """One model in one mode: its step function and what it keeps on the device."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[], None]
    peak_bytes: float = float("nan")
    seconds: list[float] = field(default_factory=list)  # per step, one value per round


def make_runner(
    name: str, mode: Mode, images: torch.Tensor, masks: torch.Tensor, device: torch.device
) -> Runner:
    """The engine's training step (deeplab/train/engine.py `_loop`) for one model, with the batch on the device."""
    model, cfg = build(name)
    model.to(device).train()
    if mode.channels_last:
        model.to(memory_format=torch.channels_last)
    cfg = train_config(cfg)
    optimizer = build_optimizer(cfg.optim, model)  # after .to(device): fused SGD on CUDA
    scheduler = build_scheduler(cfg.schedule, cfg.trainer.max_iters, optimizer)
    criterion = SegmentationLoss(NUM_CLASSES, ignore_index=IGNORE, aux_weight=cfg.loss.aux_weight)
    forward = torch.compile(model) if mode.compile else model
    normalize = Normalizer(MEAN, STD, device, mode.channels_last)
    loss_sum = torch.zeros(3, device=device)

    def step() -> None:
        x = normalize(images)
        with autocast(device, mode.amp):
            outputs = forward(x)
            loss, parts = criterion(outputs, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # the engine's GradScaler is disabled for bf16 and fp32: a plain backward
        optimizer.step()
        scheduler.step()
        # the engine's running loss sums (no host sync)
        loss_sum.add_(torch.stack([loss.detach().float(), parts["main"].float(), loss.new_zeros(()).float()]))

    return Runner(name, model, optimizer, step)


def owned_bytes(runner: Runner) -> int:
    """Device bytes the runner holds between steps: weights, gradients, optimizer state."""
    tensors = [p for p in runner.model.parameters()] + [b for b in runner.model.buffers()]
    tensors += [p.grad for p in runner.model.parameters() if p.grad is not None]
    for state in runner.optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type == "cuda")


def measure_peak(runner: Runner, device: torch.device) -> None:
    """Peak device memory of one step of this runner alone: the other runners' resident tensors (and the
    shared input batch) are subtracted."""
    if device.type != "cuda":
        return
    synchronize(device)
    others = torch.cuda.memory_allocated(device) - owned_bytes(runner)
    torch.cuda.reset_peak_memory_stats(device)
    runner.step()
    synchronize(device)
    runner.peak_bytes = torch.cuda.max_memory_allocated(device) - others


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_mode(
    names: list[str], mode: Mode, args: argparse.Namespace, device: torch.device, batch_on_device: tuple
) -> dict[str, Runner | str]:
    """Build, warm up and time every model in one mode; returns runners with their seconds per step, or an
    error string for a model that could not run (e.g. out of memory)."""
    images, masks = batch_on_device
    runners: dict[str, Runner] = {}
    failed: dict[str, str] = {}
    for name in names:
        try:
            runner = make_runner(name, mode, images, masks, device)
            for _ in range(max(args.warmup, 2 if mode.compile else 1)):  # compile happens in the first call
                runner.step()
            measure_peak(runner, device)
            runners[name] = runner
        except RuntimeError as e:
            if not is_oom(e):
                raise
            failed[name] = "out of memory"
        runner = None  # type: ignore[assignment]
        if name in failed:
            release(device)  # after the except block, which keeps the failed step's frames alive
    seconds = interleaved_rounds({n: r.step for n, r in runners.items()}, args.rounds, args.iters, device)
    for name, runner in runners.items():
        runner.seconds = seconds[name]
    if args.profile:
        for name, runner in runners.items():
            print_profile(name, mode, runner, device, args.profile)
    return {**runners, **failed}


def print_profile(name: str, mode: Mode, runner: Runner, device: torch.device, rows: int) -> None:
    """torch.profiler table of two steps, sorted by the device's (or the CPU's) self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(2):
            runner.step()
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nprofile of {name} [{mode.name}], 2 steps, by {key}:")
    print(prof.key_averages(group_by_input_shape=False).table(sort_by=key, row_limit=rows))


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch (0: its default); 1 is steadier on a busy host",
    )
    parser.add_argument("--batch", type=int, default=None, help="default: 16 on CUDA, 2 on the CPU")
    parser.add_argument("--crop", type=int, default=None, help="default: 513 on CUDA, 129 on the CPU")
    parser.add_argument("--iters", type=int, default=None, help="timed steps per round (default 10 / 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per model (default 5 / 3)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are their medians")
    parser.add_argument(
        "--models", default=None, help="comma list; default: all on CUDA, tvlike_r50,v3_r50_os8 on the CPU"
    )
    parser.add_argument("--no-peer", action="store_true", help="do not add torchvision's model per backbone")
    parser.add_argument("--modes", default=None, help="comma list, e.g. fp32,bf16,bf16+cl,bf16+cl+compile")
    parser.add_argument(
        "--matmul-size", type=int, default=None, help="peak matmul side (8192 CUDA / 2048 CPU)"
    )
    parser.add_argument("--profile", type=int, default=0, help="print torch.profiler's top N ops per model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    args.batch = args.batch or (16 if cuda else 2)
    args.crop = args.crop or (513 if cuda else 129)
    args.iters = args.iters or (10 if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 3)
    names = expand_models(args.models or ("all" if cuda else "tvlike_r50,v3_r50_os8"), not args.no_peer)
    torch.manual_seed(args.seed)
    if cuda:  # as the engine sets them for training
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    print(describe_machine(device))
    peak_dtype = torch.bfloat16 if cuda else torch.float32
    peak = matmul_peak_tflops(device, peak_dtype, args.matmul_size or (8192 if cuda else 2048))
    dtype_name = "bf16" if cuda else "fp32"
    bf16_peak = peak if cuda else matmul_peak_tflops(device, torch.bfloat16, 256, seconds=0.3)
    print(
        f"dense matmul peak measured now: {peak:.3f} TFLOP/s {dtype_name}"
        + ("" if cuda else " (the CPU's fp32 peak: MFU below is against it)")
    )
    if args.modes:
        modes = [parse_mode(m.strip()) for m in args.modes.split(",") if m.strip()]
    else:
        mode_names, notes = default_modes(device, peak, bf16_peak)
        modes = [parse_mode(m) for m in mode_names]
        for note in notes:
            print(f"note: {note}")

    flops = {name: step_flops(name, args.batch, args.crop) for name in names}
    print(
        f"batch {args.batch}, crop {args.crop}, {NUM_CLASSES} classes; {args.warmup} warm-up steps per model, "
        f"then {args.rounds} interleaved rounds of {args.iters} steps; figures are medians over rounds"
    )
    images, masks = random_batch(args.batch, args.crop, args.crop, NUM_CLASSES, device, args.seed)

    results: dict[tuple[str, str], dict] = {}
    for mode in modes:
        outcome = run_mode(names, mode, args, device, (images, masks))
        for name, item in outcome.items():
            if isinstance(item, str):
                results[(name, mode.name)] = {"error": item}
                continue
            rates = [args.batch / s for s in item.seconds]
            results[(name, mode.name)] = {
                "rates": rates,
                "images_per_s": median(rates),
                "peak_gb": item.peak_bytes / 1e9,
            }
        del outcome
        if mode.compile:
            from torch import _dynamo

            _dynamo.reset()  # drop the compiled graphs with their models
        release(device)

    ratios = report(names, modes, results, flops, peak, args)
    return {"results": results, "ratios": ratios, "peak_tflops": peak, "flops": flops}


def report(
    names: list[str], modes: list[Mode], results: dict, flops: dict, peak: float, args: argparse.Namespace
) -> dict[str, float]:
    header = (
        f"{'model':<15} {'mode':<16} {'img/s':>9} {'min-max':>15} {'ms/step':>9} {'peak GB':>8} "
        f"{'GFLOP/img':>10} {'TFLOP/s':>8} {'MFU %':>6} {'/peer':>6} {'/peer fp32':>10}"
    )
    print(header)
    print("-" * len(header))
    ratios: dict[str, float] = {}
    for name in names:
        for mode in modes:
            r = results[(name, mode.name)]
            if "error" in r:
                print(f"{name:<15} {mode.name:<16} {r['error']}")
                continue
            fwd, train = flops[name]
            achieved = train * r["images_per_s"] / 1e12
            peer = results.get((peer_of(name), mode.name), {})
            same = paired_ratio(r["rates"], peer["rates"]) if "rates" in peer and name not in PEERS else None
            peer_fp32 = results.get((peer_of(name), "fp32"), {})
            vs_fp32 = r["images_per_s"] / peer_fp32["images_per_s"] if "rates" in peer_fp32 else None
            if same is not None:
                ratios[f"{name}/{peer_of(name)} {mode.name}"] = same
            if vs_fp32 is not None and name not in PEERS:
                ratios[f"{name} {mode.name}/{peer_of(name)} fp32"] = vs_fp32
            peak_gb = "-" if math.isnan(r["peak_gb"]) else f"{r['peak_gb']:.2f}"
            spread = f"{min(r['rates']):.2f}-{max(r['rates']):.2f}"
            print(
                f"{name:<15} {mode.name:<16} {r['images_per_s']:>9.2f} {spread:>15} "
                f"{1e3 * args.batch / r['images_per_s']:>9.1f} {peak_gb:>8} {train / 1e9:>10.1f} "
                f"{achieved:>8.3f} {100 * achieved / peak:>6.1f} "
                f"{'-' if same is None else f'{same:.3f}':>6} {'-' if vs_fp32 is None else f'{vs_fp32:.2f}':>10}"
            )
    print(
        "GFLOP/img: forward + backward of one image (FlopCounterMode); forward alone: "
        + ", ".join(f"{n} {flops[n][0] / 1e9:.1f}" for n in names)
    )
    print(
        "/peer: ours / torchvision in the same mode, median of per-round ratios; /peer fp32: vs its eager fp32"
    )
    for name in names:
        if name.startswith("tvlike_"):
            for mode in modes:
                key = f"{name}/{peer_of(name)} {mode.name}"
                if key in ratios:
                    print(
                        f"ratio ours/torchvision like-for-like ({name} vs {peer_of(name)}), {mode.name}: "
                        f"{ratios[key]:.3f}"
                    )
    for name in names:
        best = max(
            (k for k in ratios if k.startswith(f"{name} ") and k.endswith(" fp32")),
            key=ratios.get,
            default=None,
        )
        if best is not None:
            mode_name = best.split(" ")[1].split("/")[0]
            print(f"best mode of {name} vs torchvision eager fp32: {mode_name} {ratios[best]:.2f}x")
    return ratios


if __name__ == "__main__":
    main()
