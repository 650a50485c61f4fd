"""
Accuracy against privacy: whole-model DP or the shared part only
================================================================

User-level DP-FedAvg on FedAvg's whole model against DP on the shared part of a personal-head model,
client accuracy against epsilon (``pfedest.privacy.DifferentialPrivacy``). See :doc:`/guide/privacy`.

The page shows the script ``examples/plot_privacy.py`` whole, then runs it at a small size for
the documentation build (its numbers are noisier than the full-size run's, ``python
examples/plot_privacy.py``).
"""

# %%
# The script
# ----------
#
# :download:`Download examples/plot_privacy.py </../examples/plot_privacy.py>`
#
# .. literalinclude:: /../examples/plot_privacy.py
#    :language: python
#    :caption: examples/plot_privacy.py

# %%
# Run at a small size
# -------------------
#
# Its ``main`` with the arguments below (``OUT`` is a temporary folder); the figure is the PNG it
# wrote.
from _gallery import run_example

run_example("plot_privacy.py", "--clients 40 --per-round 10 --rounds 8 --epsilons 1 8 inf --out OUT/privacy.png")
