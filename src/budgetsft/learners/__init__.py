"""The leader's scoring policies (SPEC §3)."""

from budgetsft.learners.arow import AROWLearner
from budgetsft.learners.logistic import LogisticLearner
from budgetsft.learners.ogd import OGDLearner
from budgetsft.learners.ridge import RidgeLearner
from budgetsft.learners.sketch import SketchLearner

__all__ = ["AROWLearner", "RidgeLearner", "LogisticLearner", "OGDLearner", "SketchLearner"]
