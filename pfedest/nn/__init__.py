"""Networks and which of their parameters are personal.

- :mod:`~pfedest.nn.modules`: the default MLP and CNN, residual adapters.
- :mod:`~pfedest.nn.splits`: :class:`Split` objects that say which parameters are personal.
"""

from .modules import MLP, Adapter, AdaptedLayer, SmallCNN, adapter_parameter_count, default_module, insert_adapters
from .splits import (AdapterSplit, FullSplit, FunctionSplit, HeadSplit, InputSplit, NameSplit, NoSplit, Split,
                     make_split)

__all__ = ["Split", "HeadSplit", "InputSplit", "AdapterSplit", "FullSplit", "NoSplit", "NameSplit", "FunctionSplit",
           "make_split", "MLP", "SmallCNN", "Adapter", "AdaptedLayer", "default_module", "insert_adapters",
           "adapter_parameter_count"]
