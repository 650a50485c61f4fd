"""
Who gains and who loses: the per-client report
==============================================

Who gains and who loses: a personalized model against FedAvg, client by client
(``pfedest.evaluation.report.client_report``). See :doc:`/guide/report`.

The page shows the script ``examples/plot_client_report.py`` whole, then runs it at a small size for
the documentation build (its numbers and curves are noisier than the full-size run's, ``python
examples/plot_client_report.py``).
"""

# %%
# The script
# ----------
#
# :download:`Download examples/plot_client_report.py </../examples/plot_client_report.py>`
#
# .. literalinclude:: /../examples/plot_client_report.py
#    :language: python
#    :caption: examples/plot_client_report.py

# %%
# Run at a small size
# -------------------
#
# Its ``main`` with the arguments below (``OUT`` is a temporary folder); the figures are the PNGs it
# wrote.
from _gallery import run_example

run_example("plot_client_report.py", "--clients 8 --rounds 5 --out OUT/client_report.png")
