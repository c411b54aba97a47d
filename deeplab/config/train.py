"""The training config: optimiser, schedule, loss, trainer, evaluation, loggers, paths, and TrainConfig."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from deeplab.config.base import (
    TORCHVISION_DEEPLABS,
    Amp,
    Device,
    Flag,
    MetricName,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Section,
)
from deeplab.config.data import DatasetConfig
from deeplab.config.model import BackboneConfig, ModelConfig, default_aspp_rates
from deeplab.config.roles import ARCHITECTURE, DATA, OPTIMISER, Added
from deeplab.errors import ConfigError

# Bounds of the keys that size a batch tensor: a typo is one line, not an allocator's traceback.
MAX_BATCH = 4096
MAX_SIDE = 16384  # pixels: a crop or window side
Side = Annotated[int, Field(ge=1, le=MAX_SIDE)]


class SGDConfig(Section):
    """configs/optim/sgd.yaml: the papers' SGD (momentum 0.9, weight decay 1e-4, lr 0.007)."""

    name: Literal["sgd"]
    lr: PositiveFloat
    momentum: NonNegativeFloat
    weight_decay: NonNegativeFloat
    nesterov: bool
    head_lr_mult: PositiveFloat
    """ASPP, decoder and heads train at lr * head_lr_mult (the backbone at lr)."""
    no_decay_norm: bool
    """true: no weight decay on BatchNorm and bias parameters."""

    @model_validator(mode="after")
    def _nesterov(self) -> SGDConfig:
        if self.nesterov and self.momentum == 0:
            raise ConfigError("optim.nesterov=true needs optim.momentum > 0")
        return self


class AdamWConfig(Section):
    """configs/optim/adamw.yaml: AdamW, the usual choice for timm encoders (ConvNeXt, ...), with the backbone at
    a fraction of the head's learning rate."""

    name: Literal["adamw"]
    lr: PositiveFloat
    betas: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)]
    eps: PositiveFloat
    weight_decay: NonNegativeFloat
    backbone_lr_mult: PositiveFloat
    """The backbone trains at lr * backbone_lr_mult, ASPP, decoder and heads at lr."""
    no_decay_norm: bool


OptimConfig = Annotated[SGDConfig | AdamWConfig, Field(discriminator="name")]


class ScheduleConfig(Section):
    """configs/schedule: lr = base_lr * (1 - iter / max_iters) ** power, after an optional linear warmup."""

    name: Literal["poly"]
    power: PositiveFloat
    warmup_iters: NonNegativeInt
    warmup_factor: Annotated[float, Field(gt=0, le=1)]
    """Warmup starts at base_lr * warmup_factor."""


class LossBase(Section):
    aux_weight: NonNegativeFloat
    """Weight of the auxiliary head's loss (used only when model.aux_head is on)."""


class CrossEntropyConfig(LossBase):
    """Pixel-wise cross-entropy (BCE for one class), averaged over the valid pixels of the batch."""

    name: Literal["cross_entropy"]
    class_weights: Literal["auto"] | list[NonNegativeFloat] | None
    """null; one weight per class; or auto: median-frequency balancing, median(f) / f_c with f_c the share of
    class c among the training masks' valid pixels (computed once, written to the run dir, logged)."""
    pos_weight: Annotated[Literal["auto"] | list[PositiveFloat] | None, Added(None)]
    """dataset.multilabel: one weight per class on its present pixels' term (BCE's pos_weight; above 1 for a
    class present on few pixels raises its recall); null: 1; auto: sqrt(absent / present pixels) of each class
    over the training masks (computed once, written to pos_weight.json in the run dir, logged)."""


class OHEMConfig(LossBase):
    """Online hard example mining: cross-entropy over the pixels the model gets least right."""

    name: Literal["ohem"]
    thresh: Annotated[float, Field(gt=0, le=1)]
    """Pixels whose true-class probability is below thresh are kept..."""
    min_kept: NonNegativeInt
    """...and at least the min_kept hardest valid pixels of the batch (per process)."""


class FocalConfig(LossBase):
    """Focal loss (Lin et al. 2017): -(1 - p_t)^gamma log p_t, averaged over the valid pixels."""

    name: Literal["focal"]
    gamma: NonNegativeFloat
    pos_weight: Annotated[Literal["auto"] | list[PositiveFloat] | None, Added(None)]
    """dataset.multilabel: one weight per class on its present pixels' term, as for cross_entropy."""


class DiceConfig(LossBase):
    """Soft Dice loss over the classes present in the batch's targets."""

    name: Literal["dice"]
    eps: NonNegativeFloat
    """Added to numerator and denominator (smoothing)."""


class LovaszConfig(LossBase):
    """Lovasz-softmax (Berman et al. 2018): a surrogate of the Jaccard loss, i.e. of 1 - IoU."""

    name: Literal["lovasz"]


def _loss_of_older_checkpoints(value: Any) -> Any:
    # Checkpoints written before the loss group had `loss: {aux_weight}` and trained with cross-entropy.
    if isinstance(value, Mapping) and "name" not in value:
        return {"name": "cross_entropy", "class_weights": None, "pos_weight": None, **value}
    return value


LossConfig = Annotated[
    CrossEntropyConfig | OHEMConfig | FocalConfig | DiceConfig | LovaszConfig,
    Field(discriminator="name"),
    BeforeValidator(_loss_of_older_checkpoints),
]


class EmaConfig(Section):
    """trainer.ema: an exponential moving average of the weights (deeplab/train/ema.py), validated as val/ema/*."""

    decay: Annotated[float, Field(gt=0, lt=1)] | None
    """null: off; e.g. 0.999: after each optimizer step ema = decay * ema + (1 - decay) * weights."""
    warmup: NonNegativeInt
    """Optimizer steps over which the decay ramps linearly from 0 to `decay` (0: `decay` from the start)."""


class EarlyStopConfig(Section):
    """trainer.early_stop: end the run once validation stops improving (deeplab/train/engine.py)."""

    patience: PositiveInt | None
    """null: off; N: the run ends after N validations in a row without a rise of val mIoU of at least min_delta
    over the best so far (best.pt holds the best weights; status.json says why it ended)."""
    min_delta: Annotated[float, Field(ge=0, le=1)]
    """The smallest rise of val mIoU that counts, as a fraction (0.005: half a point)."""


class TrainerConfig(Section):
    """configs/trainer: the loop, its intervals and the run-time options."""

    max_iters: PositiveInt
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH)]
    """Total over all processes."""
    crop_size: Side | Annotated[list[Side], Field(min_length=2, max_length=2)]
    """Training crop: N for N x N (513 in the papers), or [height, width] (Cityscapes: [512, 1024])."""
    eval_interval: PositiveInt
    """Validate every N iterations (and at the end)."""
    ckpt_interval: PositiveInt
    """Write checkpoints/last.pt every N iterations (and at the end, and on a stop signal)."""
    log_interval: PositiveInt
    resume: str | None
    """auto: the run dir's last.pt if there is one; a path: that last.pt; null: start afresh."""
    amp: Amp
    channels_last: Flag
    compile: bool
    device: Device
    num_workers: NonNegativeInt
    seed: int
    deterministic: bool
    sync_bn: bool
    """SyncBatchNorm under DDP."""
    freeze_bn: Annotated[bool, Added(False)]
    """Every BatchNorm keeps its running statistics and affine parameters (the DeepLabv3 paper's second stage:
    fine-tuning at output stride 8 with BatchNorm frozen)."""
    activation_checkpointing: Annotated[bool, Added(False)]
    """Recompute the backbone's deepest stages in the backward pass instead of storing their activations:
    less memory (OS 8 on a small GPU) for more time."""
    max_nonfinite_skips: NonNegativeInt
    """Non-finite losses to skip (one host sync per step) before stopping; 0 checks at log boundaries only."""
    ema: Annotated[EmaConfig, Added({"decay": None, "warmup": 0})]
    early_stop: Annotated[EarlyStopConfig, Added({"patience": None, "min_delta": 0.0})]
    accumulate: Annotated[PositiveInt, Added(1)]
    """Micro-batches per optimizer step (gradient accumulation): batch_size stays the batch of one optimizer
    step, each process runs batch_size / (processes * accumulate) images at a time. Iterations, the schedule,
    logs and checkpoints count optimizer steps."""
    precise_bn: Annotated[Literal["auto"] | NonNegativeInt, Added(0)]
    """Before each validation, recompute BatchNorm's running statistics over N training batches, in place,
    so that the validation, last.pt and best.pt agree (deeplab/train/precise_bn.py); 0: off; auto: 16 batches while the running
    statistics still hold over 5% of their initial values ((1 - momentum)^steps: a short run from random
    weights, above all with momentum 0.01), else off."""

    def crop(self) -> tuple[int, int]:
        """(height, width) of the training crop."""
        c = self.crop_size
        return (c, c) if isinstance(c, int) else (c[0], c[1])


class EvalConfig(Section):
    """configs/eval: how whole images are evaluated (validation in training, evaluate.py, predict)."""

    output_stride: Literal[8, 16] | None
    """Evaluate at another output stride than the model was trained at (train 16, eval 8)."""
    scales: Annotated[list[PositiveFloat], Field(min_length=1)]
    """Multi-scale inputs, e.g. [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]; probabilities are averaged."""
    flip: bool
    mode: Literal["whole", "slide"]
    window: Side
    """slide: window size."""
    overlap: Annotated[float, Field(ge=0, lt=1)]
    """slide: overlap of neighbouring windows."""
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH)]


class TensorBoardLoggerConfig(Section):
    """configs/logger/tensorboard: event files in the run dir's tensorboard/ (deeplab/train/loggers/tensorboard.py)."""


class CsvLoggerConfig(Section):
    """configs/logger/csv: the run dir's metrics.csv, one row per logged step (deeplab/train/loggers/csvfile.py)."""


class MlflowLoggerConfig(Section):
    """configs/logger/mlflow: MLflow tracking (pip install -e ".[mlflow]"; deeplab/train/loggers/mlflow_tracking.py)."""

    tracking_uri: str | None
    """null: the local store mlruns/ beside the run dir (outputs/train/mlruns); or a server, a database URI."""
    experiment: Annotated[str, Field(min_length=1)]
    """The MLflow experiment the run is logged in."""


class WandbLoggerConfig(Section):
    """configs/logger/wandb: Weights & Biases (pip install -e ".[wandb]"; deeplab/train/loggers/wandb_run.py), offline
    unless you have logged in (WANDB_API_KEY or `wandb login`; WANDB_MODE, when set, decides)."""

    project: Annotated[str, Field(min_length=1)]
    """The W&B project the run is logged in."""


def _tensorboard_flag(value: Any) -> Any:
    """logger.tensorboard was a flag before the logger list: true is the logger, false none."""
    if value is True:
        return {}
    return None if value is False else value


class LoggerConfig(Section):
    """configs/logger: the loggers chosen by logger=[tensorboard,csv,mlflow,wandb] (each adds its section)."""

    tensorboard: Annotated[TensorBoardLoggerConfig | None, BeforeValidator(_tensorboard_flag)] = None
    csv: CsvLoggerConfig | None = None
    mlflow: MlflowLoggerConfig | None = None
    wandb: WandbLoggerConfig | None = None
    num_images: NonNegativeInt
    """Validation images shown as input | truth | prediction."""


class PathsConfig(Section):
    data_dir: str
    output_dir: str
    cache_dir: str
    """Results worth keeping between runs (the training masks' label counts), keyed by the files they
    come from."""


class TrainConfig(Section):
    """configs/train.yaml, composed: everything `python train.py` runs on."""

    task_name: str
    model: Annotated[ModelConfig, ARCHITECTURE]
    backbone: Annotated[BackboneConfig, ARCHITECTURE]
    dataset: Annotated[DatasetConfig, DATA]
    optim: Annotated[OptimConfig, OPTIMISER]
    schedule: ScheduleConfig
    trainer: TrainerConfig
    eval: EvalConfig
    loss: LossConfig
    logger: LoggerConfig
    paths: PathsConfig
    optimized_metric: MetricName
    """The metric train.py returns to Hydra sweepers (e.g. Optuna)."""

    @model_validator(mode="after")
    def _cross(self) -> TrainConfig:
        t = self.trainer
        if self.schedule.warmup_iters >= t.max_iters:
            raise ConfigError(
                f"schedule.warmup_iters must be below trainer.max_iters ({t.max_iters}), got "
                f"{self.schedule.warmup_iters}"
            )
        if t.batch_size < 2 and self.model.aspp.image_pooling:
            raise ConfigError(
                f"trainer.batch_size={t.batch_size}: BatchNorm after ASPP's image pooling needs at least 2 "
                "images per process in training; raise trainer.batch_size"
            )
        if isinstance(self.loss, CrossEntropyConfig) and isinstance(self.loss.class_weights, list):
            want = max(self.dataset.num_classes, 2)
            if len(self.loss.class_weights) != want:
                raise ConfigError(
                    f"loss.class_weights has {len(self.loss.class_weights)} values but there are {want} classes"
                    f"{' (background and foreground)' if self.dataset.num_classes == 1 else ''}; give one per class"
                )
        self._multilabel_loss()
        untrained = (
            self.model.init_from is None and self.model.pretrained is None and not self.backbone.pretrained
        )
        if t.freeze_bn and untrained:
            raise ConfigError(
                "trainer.freeze_bn=true would freeze BatchNorm at its initial statistics: give the trained weights "
                "to start from with model.init_from=PATH (or use pretrained weights)"
            )
        if t.activation_checkpointing and not self.backbone.name.startswith("resnet"):
            raise ConfigError(
                f"trainer.activation_checkpointing is offered for the ResNet backbones (layer3 and layer4 "
                f"recomputed unit by unit), not {self.backbone.name}"
            )
        if self.model.pretrained is not None and self.backbone.name not in TORCHVISION_DEEPLABS:
            raise ConfigError(
                f"model.pretrained: torchvision publishes DeepLabV3 weights for {', '.join(TORCHVISION_DEEPLABS)} "
                f"only, not {self.backbone.name}"
            )
        return self

    def _multilabel_loss(self) -> None:
        """A multi-label model scores each class on its own (sigmoid): the losses that compare the classes of
        a pixel (OHEM's, Lovasz-softmax) and class weights have no meaning there; pos_weight has none without it."""
        loss, d = self.loss, self.dataset
        pos_weight = getattr(loss, "pos_weight", None)
        if not d.multilabel:
            if pos_weight is not None:
                raise ConfigError(
                    "loss.pos_weight weighs the present pixels of each class of a multi-label model; set "
                    "dataset.multilabel=true, or use loss.class_weights"
                )
            return
        if isinstance(loss, OHEMConfig | LovaszConfig):
            raise ConfigError(
                f"loss={loss.name} compares the classes of a pixel (softmax); with dataset.multilabel use "
                "loss=cross_entropy (BCE per class), dice or focal"
            )
        if isinstance(loss, CrossEntropyConfig) and loss.class_weights is not None:
            raise ConfigError(
                "loss.class_weights weighs classes against each other in a softmax; with dataset.multilabel give "
                "loss.pos_weight (one per class) instead"
            )
        if isinstance(pos_weight, list) and len(pos_weight) != d.num_classes:
            raise ConfigError(
                f"loss.pos_weight has {len(pos_weight)} values but dataset.num_classes is {d.num_classes}; give "
                "one per class"
            )

    def aspp_rates(self) -> list[int]:
        """ASPP rates at the training output stride."""
        return list(self.model.aspp.rates or default_aspp_rates(self.backbone.output_stride))
