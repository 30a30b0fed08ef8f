"""Data: the canonical JSONL schema (SPEC §8) and loaders of the built-in data sets."""

from budgetsft.data.schema import Dataset, Example

__all__ = ["Dataset", "Example"]
