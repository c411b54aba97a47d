"""Scoring a model: the evaluation loop over whole images (loop.py), the confusion matrix and its metrics,
the report files, and the collapse warning."""
