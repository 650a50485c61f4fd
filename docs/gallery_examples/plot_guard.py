"""
The guard: each client with it against without
===============================================

Every client's accuracy with ``guard="validation"`` against without it, and each client's change
against FedAvg trained with the same rounds. See :doc:`/guide/guard`.

The page shows the script ``examples/plot_guard.py`` whole, then runs it at a small size for the
documentation build (noisier than the full-size run, ``python examples/plot_guard.py``).
"""

# %%
# The script
# ----------
#
# :download:`Download examples/plot_guard.py </../examples/plot_guard.py>`
#
# .. literalinclude:: /../examples/plot_guard.py
#    :language: python
#    :caption: examples/plot_guard.py

# %%
# Run at a small size
# -------------------
#
# Its ``main`` with the arguments below (``OUT`` is a temporary folder); the figure is the PNG it
# wrote.
from _gallery import run_example

run_example("plot_guard.py", "--clients 10 --rounds 15 --out OUT/guard.png")
