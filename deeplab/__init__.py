"""DeepLabv3 and DeepLabv3+ semantic segmentation in PyTorch."""

from deeplab.version import __version__

__all__ = ["__version__", "load"]


def load(path_or_repo_id, revision=None):  # type: ignore[no-untyped-def]
    """(model in eval mode on the CPU, its model card) of an exported model folder, a checkpoint or run folder,
    or a Hugging Face hub repo id ("owner/name", with the [hub] extra). See deeplab.deploy.hub."""
    from deeplab.deploy.hub import load as load_model

    return load_model(path_or_repo_id, revision)
