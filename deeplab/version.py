"""The package's version (here, so that a model card can be stamped without importing the package's top)."""

__version__ = "0.1.0"
