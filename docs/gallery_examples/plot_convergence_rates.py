"""
Convergence rates: measured against predicted
=============================================

Convex problems whose constants are known (``pfedest.theory.problems``): measured convergence of FedAlt
and FedSim against what the theory predicts (``pfedest.theory.rates``). See :doc:`/theory`.

The page shows the script ``examples/plot_convergence_rates.py`` whole, then runs it at a small size
for the documentation build (its numbers and curves are noisier than the full-size run's, ``python
examples/plot_convergence_rates.py``).
"""

# %%
# The script
# ----------
#
# :download:`Download examples/plot_convergence_rates.py </../examples/plot_convergence_rates.py>`
#
# .. literalinclude:: /../examples/plot_convergence_rates.py
#    :language: python
#    :caption: examples/plot_convergence_rates.py

# %%
# Run at a small size
# -------------------
#
# Its ``main`` with the arguments below (``OUT`` is a temporary folder); the figures are the PNGs it
# wrote.
from _gallery import run_example

run_example("plot_convergence_rates.py", "--out-dir OUT --rounds 100 --horizons 16,32,64 --seeds 1")
