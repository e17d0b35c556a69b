"""Synthetic sales-floor speech with known emotional ground truth (espeak-ng + sox)."""
