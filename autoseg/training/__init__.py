"""Training: cross-validation splits, loss, patch sampling (the training loop lands with the rest of issue
5)."""

from __future__ import annotations
