"""Convex personalized problems with known constants, and what the convergence theory predicts.

One module a job; arrows point one way (``rates -> driver -> problems``, ``generators -> problems``):

- :mod:`~pfedest.theory.constants`: :class:`~pfedest.theory.constants.Constants`, the numbers the
  theory is written in.
- :mod:`~pfedest.theory.problems`: the problems, which compute their constants from the data.
- :mod:`~pfedest.theory.generators`: data generators with a knob for each quantity of the theory.
- :mod:`~pfedest.theory.driver`: :func:`~pfedest.theory.driver.run` FedAlt or FedSim on a problem,
  measuring every round.
- :mod:`~pfedest.theory.separable`: a convex problem without a minimizer, where the measure decays
  sublinearly.
- :mod:`~pfedest.theory.simulate`: the same rounds in NumPy, many seeds at once (a hundred times
  faster), equal to the driver's on the same draws.
- :mod:`~pfedest.theory.rates`: predicted step sizes, bounds and slopes, and slope fits.
- :mod:`~pfedest.theory.evidence`: fits with bootstrap intervals over seeds, which can reject a
  prediction.

Every public name of the eight is importable from ``pfedest.theory``.
"""

from .constants import *  # noqa: F401,F403  (the public names of each module, listed in its __all__)
from .constants import __all__ as _constants
from .problems import *  # noqa: F401,F403
from .problems import __all__ as _problems
from .generators import *  # noqa: F401,F403
from .generators import __all__ as _generators
from .driver import *  # noqa: F401,F403
from .driver import __all__ as _driver
from .rates import *  # noqa: F401,F403
from .rates import __all__ as _rates
from .separable import *  # noqa: F401,F403
from .separable import __all__ as _separable
from .simulate import *  # noqa: F401,F403
from .simulate import __all__ as _simulate
from .evidence import *  # noqa: F401,F403
from .evidence import __all__ as _evidence

__all__ = [*_constants, *_problems, *_generators, *_separable, *_driver, *_simulate, *_rates, *_evidence]
