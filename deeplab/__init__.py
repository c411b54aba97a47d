"""DeepLabv3 and DeepLabv3+ semantic segmentation in PyTorch."""

__version__ = "0.1.0"
