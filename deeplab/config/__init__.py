"""The config schema: every key of configs/ typed, documented and checked here, once.

Hydra composes the YAML files of configs/ (they hold the default values); right after composition the
entry points turn the DictConfig into these typed models with `train_config`, `evaluate_config` or
`predict_config`. That happens before any data is listed or any model is built. A mistake (a wrong type, a
value out of range, an unknown key, also one appended with `+`) raises ConfigError with one line naming the
key; the code after validation reads typed values and casts nothing.

The schema is split by section: base (value types), model, data, train, entries (the commands that use a
trained model); validation turns a composed config into them. Every public name is importable from here.
"""

from __future__ import annotations

from deeplab.config.base import Color, Section
from deeplab.config.data import (
    SHAPES,
    ADE20KDataset,
    CamVidDataset,
    CityscapesDataset,
    CocoDataset,
    DatasetBase,
    DatasetConfig,
    FolderDataset,
    LabelmeDataset,
    SBDDataset,
    SyntheticDataset,
    VOCAugDataset,
    VOCDataset,
    overlay_background_ids,
)
from deeplab.config.entries import (
    DemoConfig,
    EvaluateConfig,
    ExportConfig,
    ModelRun,
    PredictConfig,
    ServeConfig,
    location_keys,
)
from deeplab.config.model import (
    BackboneConfig,
    MobileNetConfig,
    ModelConfig,
    ResNetConfig,
    TimmConfig,
    default_aspp_rates,
)
from deeplab.config.train import (
    CrossEntropyConfig,
    DiceConfig,
    EarlyStopConfig,
    EvalConfig,
    FocalConfig,
    LossConfig,
    OHEMConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
)
from deeplab.config.validation import (
    config_dir,
    demo_config,
    evaluate_config,
    export_config,
    flatten,
    predict_config,
    serve_config,
    to_plain,
    train_config,
    validate,
)

__all__ = [
    "ADE20KDataset",
    "BackboneConfig",
    "CamVidDataset",
    "CityscapesDataset",
    "CocoDataset",
    "Color",
    "CrossEntropyConfig",
    "DatasetBase",
    "DatasetConfig",
    "DemoConfig",
    "ServeConfig",
    "DiceConfig",
    "EarlyStopConfig",
    "EvalConfig",
    "EvaluateConfig",
    "ExportConfig",
    "FocalConfig",
    "FolderDataset",
    "LabelmeDataset",
    "LossConfig",
    "MobileNetConfig",
    "ModelConfig",
    "ModelRun",
    "OHEMConfig",
    "OptimConfig",
    "PredictConfig",
    "ResNetConfig",
    "SBDDataset",
    "SHAPES",
    "ScheduleConfig",
    "Section",
    "SyntheticDataset",
    "TimmConfig",
    "TrainConfig",
    "VOCAugDataset",
    "VOCDataset",
    "config_dir",
    "default_aspp_rates",
    "demo_config",
    "serve_config",
    "evaluate_config",
    "export_config",
    "flatten",
    "location_keys",
    "overlay_background_ids",
    "predict_config",
    "to_plain",
    "train_config",
    "validate",
]
