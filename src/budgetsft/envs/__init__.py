"""Synthetic environments with a known θ* and exact expected rewards."""

from budgetsft.envs.synthetic import AdversarialContextEnv, DriftingEnv, LinearSoftmaxEnv

__all__ = ["LinearSoftmaxEnv", "DriftingEnv", "AdversarialContextEnv"]
