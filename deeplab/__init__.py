"""DeepLabv3 and DeepLabv3+ semantic segmentation in PyTorch."""

__version__ = "0.1.0"


def load(path_or_repo_id, revision=None):  # type: ignore[no-untyped-def]
    """(model in eval mode on the CPU, its model card) of an exported model folder, a checkpoint or run folder,
    or a Hugging Face hub repo id ("owner/name", with the [hub] extra). See deeplab.hub."""
    from deeplab.hub import load as load_model

    return load_model(path_or_repo_id, revision)
