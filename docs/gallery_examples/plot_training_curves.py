"""
Training curves of FedAlt and FedSim
====================================

Test accuracy over rounds of FedAlt and FedSim, one column per personal part, in the style of
the paper's figures.

Full size: ``python examples/plot_training_curves.py``. Here, for the documentation build: ``plot_training_curves.py --out-dir OUT --clients 6 --per-round 3 --rounds 6 --every 3``.
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
spec = importlib.util.spec_from_file_location("plot_training_curves", EXAMPLES / "plot_training_curves.py")
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)

out = Path(tempfile.mkdtemp())
args = "plot_training_curves.py --out-dir OUT --clients 6 --per-round 3 --rounds 6 --every 3".split()[1:]
example.main([a.replace("OUT", str(out)) for a in args])
plt.close("all")

# %%
# The figure(s) the script saved.
for png in sorted(out.glob("**/*.png")):
    image = plt.imread(png)
    fig, ax = plt.subplots(figsize=(image.shape[1] / 100, image.shape[0] / 100), layout="constrained")
    ax.imshow(image)
    ax.set_axis_off()
