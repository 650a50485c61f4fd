"""pfedest: federated learning with partial model personalization behind a scikit-learn estimator."""

__version__ = "0.2.0"

from . import _moved  # noqa: E402

_moved.install()

from .callbacks import Callback, Checkpoint, EarlyStopping, EvaluateClients  # noqa: E402
from .estimator import PartialPersonalizedClassifier  # noqa: E402
from .regressor import PartialPersonalizedRegressor  # noqa: E402
from .nn.splits import (AdapterSplit, FullSplit, FunctionSplit, HeadSplit, InputSplit, NameSplit, NoSplit, Split,
                     make_split)

__all__ = [
    "PartialPersonalizedClassifier",
    "PartialPersonalizedRegressor",
    "Split",
    "HeadSplit",
    "InputSplit",
    "AdapterSplit",
    "FullSplit",
    "NoSplit",
    "NameSplit",
    "FunctionSplit",
    "make_split",
    "Callback",
    "EvaluateClients",
    "EarlyStopping",
    "Checkpoint",
    "__version__",
]
