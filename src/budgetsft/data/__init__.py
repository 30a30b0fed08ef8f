"""Data: the canonical JSONL schema (SPEC §8) and loaders of the built-in data sets."""

from budgetsft.data.builtin import (
    default_cache_dir,
    describe,
    fetch_evals_wheel,
    list_datasets,
    load_dataset,
    train_test_split,
)
from budgetsft.data.jsonl import (
    JsonlProblem,
    JsonlReport,
    load_jsonl,
    read_jsonl,
    validate_record,
    write_jsonl,
)
from budgetsft.data.schema import Dataset, Example

__all__ = [
    "Dataset",
    "Example",
    "JsonlProblem",
    "JsonlReport",
    "default_cache_dir",
    "describe",
    "fetch_evals_wheel",
    "list_datasets",
    "load_dataset",
    "load_jsonl",
    "read_jsonl",
    "train_test_split",
    "validate_record",
    "write_jsonl",
]
