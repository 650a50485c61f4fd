"""pfedest: federated learning with partial model personalization behind a scikit-learn estimator."""

from .estimator import PartialPersonalizedClassifier
from .splits import (AdapterSplit, FullSplit, FunctionSplit, HeadSplit, InputSplit, NameSplit, NoSplit, Split,
                     make_split)

__version__ = "0.1.0"

__all__ = [
    "PartialPersonalizedClassifier",
    "Split",
    "HeadSplit",
    "InputSplit",
    "AdapterSplit",
    "FullSplit",
    "NoSplit",
    "NameSplit",
    "FunctionSplit",
    "make_split",
    "__version__",
]
