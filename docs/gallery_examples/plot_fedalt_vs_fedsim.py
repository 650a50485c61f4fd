"""
FedAlt against FedSim: coupling and personal noise
==================================================

When does FedAlt beat FedSim? Sweeps over the two knobs the theory names: the coupling between
shared and personal parameters, and the noise of the personal gradients.

The page shows the script ``examples/plot_fedalt_vs_fedsim.py`` whole, then runs it at a small size
for the documentation build (its numbers and curves are noisier than the full-size run's, ``python
examples/plot_fedalt_vs_fedsim.py``).
"""

# %%
# The script
# ----------
#
# :download:`Download examples/plot_fedalt_vs_fedsim.py </../examples/plot_fedalt_vs_fedsim.py>`
#
# .. literalinclude:: /../examples/plot_fedalt_vs_fedsim.py
#    :language: python
#    :caption: examples/plot_fedalt_vs_fedsim.py

# %%
# Run at a small size
# -------------------
#
# Its ``main`` with the arguments below (``OUT`` is a temporary folder); the figures are the PNGs it
# wrote.
from _gallery import run_example

run_example(
    "plot_fedalt_vs_fedsim.py",
    "--out-dir OUT --couplings 0,0.5,0.9 --etas 1.0 --rounds 60"
    " --noises 0,4 --noise-couplings 0,0.8 --noise-rounds 60 --seeds 1",
)
