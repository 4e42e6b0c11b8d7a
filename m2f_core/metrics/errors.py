"""The one error type of the metrics: bad inputs, reported in one line."""

from __future__ import annotations


class MetricInputError(ValueError):
    """An input to a metric (file, JSON, array) is missing or inconsistent; the message is one line."""
