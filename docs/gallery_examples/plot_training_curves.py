"""
Training curves of FedAlt and FedSim
====================================

Test accuracy over rounds of FedAlt and FedSim, one column per personal part, in the style of
the paper's figures.

The page shows the script ``examples/plot_training_curves.py`` whole, then runs it at a small size
for the documentation build (its numbers and curves are noisier than the full-size run's, ``python
examples/plot_training_curves.py``).
"""

# %%
# The script
# ----------
#
# :download:`Download examples/plot_training_curves.py </../examples/plot_training_curves.py>`
#
# .. literalinclude:: /../examples/plot_training_curves.py
#    :language: python
#    :caption: examples/plot_training_curves.py

# %%
# Run at a small size
# -------------------
#
# Its ``main`` with the arguments below (``OUT`` is a temporary folder); the figures are the PNGs it
# wrote.
from _gallery import run_example

run_example("plot_training_curves.py", "--out-dir OUT --clients 6 --per-round 3 --rounds 6 --every 3")
