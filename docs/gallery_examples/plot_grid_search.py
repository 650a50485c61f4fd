"""
Choosing the personal fraction by grid search
=============================================

GridSearchCV over the kind of split and its personal fraction, scored by
``pfedest.evaluation.model_selection.ClientKFold`` on federated digits whose clients permute labels. See
:doc:`/guide/choosing`.

Full size: ``python examples/plot_grid_search.py``. Here, for the documentation build: ``plot_grid_search.py --clients 6 --rounds 3 --folds 2 --n-jobs 1 --out OUT/grid_search.png``.
"""

# %%
# Load the script from ``examples/`` and run its ``main`` at a small size; it writes its
# figure(s) into a temporary folder.
import importlib.util
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

# sphinx-gallery runs this file from its own folder, docs/gallery_examples/.
EXAMPLES = Path("../../examples").resolve()
spec = importlib.util.spec_from_file_location("plot_grid_search", EXAMPLES / "plot_grid_search.py")
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)

out = Path(tempfile.mkdtemp())
args = "plot_grid_search.py --clients 6 --rounds 3 --folds 2 --n-jobs 1 --out OUT/grid_search.png".split()[1:]
example.main([a.replace("OUT", str(out)) for a in args])
plt.close("all")

# %%
# The figure(s) the script saved.
for png in sorted(out.glob("**/*.png")):
    image = plt.imread(png)
    fig, ax = plt.subplots(figsize=(image.shape[1] / 100, image.shape[0] / 100), layout="constrained")
    ax.imshow(image)
    ax.set_axis_off()
