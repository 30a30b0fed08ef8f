"""The canonical example (SPEC §8): one prompt, K >= 2 candidate answers, a gold index."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Example", "Dataset"]


@dataclass(frozen=True)
class Example:
    """One line of canonical JSONL.

    ``{"id": "q17", "prompt": "...", "candidates": ["...", "..."], "answer": 2}``

    Parameters
    ----------
    id : str
    prompt : str
    candidates : tuple of str, length K >= 2
    answer : int or None
        Index of the gold candidate; None for unlabelled pools.
    cost : float or None
        Price of the label; None means 1.
    """

    id: str
    prompt: str
    candidates: tuple[str, ...]
    answer: int | None = None
    cost: float | None = None

    def to_json(self) -> dict:
        out: dict = {"id": self.id, "prompt": self.prompt, "candidates": list(self.candidates)}
        if self.answer is not None:
            out["answer"] = self.answer
        if self.cost is not None:
            out["cost"] = self.cost
        return out


@dataclass(frozen=True)
class Dataset:
    """A named data set with a deterministic train/test split."""

    name: str
    train: list[Example]
    test: list[Example]
    labels: tuple[str, ...] | None = None  # the fixed label set, when there is one
    meta: dict = field(default_factory=dict)
