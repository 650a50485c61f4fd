"""Convex personalized problems with known constants, and what the convergence theory predicts.

- :mod:`~pfedest.theory.problems`: the problems and their constants.
- :mod:`~pfedest.theory.rates`: predicted step sizes, bounds and slopes, and slope fits.
"""

from .problems import *  # noqa: F401,F403  (the public names of each module, listed in its __all__)
from .problems import __all__ as _problems
from .rates import *  # noqa: F401,F403
from .rates import __all__ as _rates

__all__ = [*_problems, *_rates]
