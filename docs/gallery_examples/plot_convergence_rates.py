"""
Convergence rates: measured against predicted
=============================================

Convex problems whose constants are known (``pfedest.theory.problems``): measured convergence of FedAlt
and FedSim against what the theory predicts (``pfedest.theory.rates``). See :doc:`/theory`.

Full size: ``python examples/plot_convergence_rates.py``. Here, for the documentation build: ``plot_convergence_rates.py --out-dir OUT --rounds 100 --horizons 16,32,64 --seeds 1``.
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
spec = importlib.util.spec_from_file_location("plot_convergence_rates", EXAMPLES / "plot_convergence_rates.py")
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)

out = Path(tempfile.mkdtemp())
args = "plot_convergence_rates.py --out-dir OUT --rounds 100 --horizons 16,32,64 --seeds 1".split()[1:]
example.main([a.replace("OUT", str(out)) for a in args])
plt.close("all")

# %%
# The figure(s) the script saved.
for png in sorted(out.glob("**/*.png")):
    image = plt.imread(png)
    fig, ax = plt.subplots(figsize=(image.shape[1] / 100, image.shape[0] / 100), layout="constrained")
    ax.imshow(image)
    ax.set_axis_off()
