"""
Choosing the personal fraction by grid search
=============================================

GridSearchCV over the kind of split and its personal fraction, scored by
``pfedest.evaluation.model_selection.ClientKFold`` on federated digits whose clients permute labels. See
:doc:`/guide/choosing`.

The page shows the script ``examples/plot_grid_search.py`` whole, then runs it at a small size for
the documentation build (its numbers and curves are noisier than the full-size run's, ``python
examples/plot_grid_search.py``).
"""

# %%
# The script
# ----------
#
# :download:`Download examples/plot_grid_search.py </../examples/plot_grid_search.py>`
#
# .. literalinclude:: /../examples/plot_grid_search.py
#    :language: python
#    :caption: examples/plot_grid_search.py

# %%
# Run at a small size
# -------------------
#
# Its ``main`` with the arguments below (``OUT`` is a temporary folder); the figures are the PNGs it
# wrote.
from _gallery import run_example

run_example("plot_grid_search.py", "--clients 6 --rounds 3 --folds 2 --n-jobs 1 --out OUT/grid_search.png")
