"""
Quickstart: personalized against FedAvg and local training
==========================================================

Partial personalization against its two baselines, FedAvg (nothing personal) and local training
(everything personal), on clients whose features and labels are shifted: the table printed below
compares the mean, weighted mean and worst-client accuracy of each.

The page shows the script ``examples/quickstart.py`` whole, then runs it at a small size for the
documentation build (its numbers and curves are noisier than the full-size run's, ``python
examples/quickstart.py``).
"""

# %%
# The script
# ----------
#
# :download:`Download examples/quickstart.py </../examples/quickstart.py>`
#
# .. literalinclude:: /../examples/quickstart.py
#    :language: python
#    :caption: examples/quickstart.py

# %%
# Run at a small size
# -------------------
#
# Its ``main`` with the arguments below; it draws no figure, the table is its printed output.
from _gallery import run_example

run_example("quickstart.py", "--clients 8 --rounds 10 --default-rounds 20")
