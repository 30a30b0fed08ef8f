"""The leader's label-querying strategies (SPEC §4)."""

from budgetsft.gates.baselines import BBQGate, CGZGate, FirstGate, FullGate, MarginGate, RandomGate
from budgetsft.gates.llf import LLFGate, latency_of, select_pool

__all__ = [
    "LLFGate",
    "FullGate",
    "RandomGate",
    "FirstGate",
    "MarginGate",
    "BBQGate",
    "CGZGate",
    "select_pool",
    "latency_of",
]
