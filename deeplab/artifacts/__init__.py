"""A trained model on disk: checkpoint files (safe loading, atomic saving, loading weights into a model),
compatibility with a config, the model card, and what `checkpoint=` names (locate)."""
