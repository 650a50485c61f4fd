"""
Personalized regression: a personal head against local-only and FedAvg
======================================================================

``PartialPersonalizedRegressor`` on scikit-learn's diabetes data dealt to clients, each with its own
offset of the target: per-client held-out :math:`R^2` of a personal output layer, of local-only
models (``split="full"``) and of FedAvg (``split="none"``), over seeds.

The page shows the script ``examples/plot_regressor.py`` whole, then runs it at a small size for
the documentation build (its numbers are noisier than the full-size run's, ``python
examples/plot_regressor.py``).
"""

# %%
# The script
# ----------
#
# :download:`Download examples/plot_regressor.py </../examples/plot_regressor.py>`
#
# .. literalinclude:: /../examples/plot_regressor.py
#    :language: python
#    :caption: examples/plot_regressor.py

# %%
# Run at a small size
# -------------------
#
# Its ``main`` with the arguments below (``OUT`` is a temporary folder); the figure is the PNG it
# wrote.
from _gallery import run_example

run_example("plot_regressor.py", "--rounds 30 --seeds 2 --out OUT/regressor.png")
