"""Old module names (``pfedest.engine``, ``pfedest.splits``, ...) kept working after the layout change.

Each old name imports as an alias of its new module, with a ``FutureWarning`` that names the new
spelling. Pickles that name a class by its old module load the same way.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

#: old module -> new module (the layout of 0.2: core/, nn/, evaluation/, theory/).
MOVED = {
    "pfedest.algorithms": "pfedest.core.algorithms",
    "pfedest.engine": "pfedest.core.engine",
    "pfedest.sampling": "pfedest.core.sampling",
    "pfedest.schedules": "pfedest.core.schedules",
    "pfedest.server": "pfedest.core.server",
    "pfedest.model": "pfedest.core.model",
    "pfedest.devices": "pfedest.core.devices",
    "pfedest.modules": "pfedest.nn.modules",
    "pfedest.splits": "pfedest.nn.splits",
    "pfedest.report": "pfedest.evaluation.report",
    "pfedest.model_selection": "pfedest.evaluation.model_selection",
    "pfedest.plotting": "pfedest.evaluation.plotting",
    "pfedest.problems": "pfedest.theory",
    "pfedest.rates": "pfedest.theory",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name and loads it as a view of the new module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return types.ModuleType(spec.name)

    def exec_module(self, module):
        new = MOVED[module.__name__]
        # stacklevel skips the import machinery's frames: the warning points at the user's import
        warnings.warn(f"{module.__name__} has moved to {new}; import it from there (the old name will be "
                      "removed in a later release).", FutureWarning, stacklevel=2)
        target = importlib.import_module(new)
        module.__dict__.update({k: v for k, v in vars(target).items() if not k.startswith("__")})
        module.__getattr__ = lambda name: getattr(target, name)  # names added to the new module later
        module.__doc__ = target.__doc__


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
