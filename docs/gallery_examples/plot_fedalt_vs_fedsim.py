"""
FedAlt against FedSim: coupling and personal noise
==================================================

When does FedAlt beat FedSim? Sweeps over the two knobs the theory names: the coupling between
shared and personal parameters, and the noise of the personal gradients.

Full size: ``python examples/plot_fedalt_vs_fedsim.py``. Here, for the documentation build: ``plot_fedalt_vs_fedsim.py --out-dir OUT --couplings 0,0.5,0.9 --etas 1.0 --rounds 60 --noises 0,4 --noise-couplings 0,0.8 --noise-rounds 60 --seeds 1``.
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
spec = importlib.util.spec_from_file_location("plot_fedalt_vs_fedsim", EXAMPLES / "plot_fedalt_vs_fedsim.py")
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)

out = Path(tempfile.mkdtemp())
args = "plot_fedalt_vs_fedsim.py --out-dir OUT --couplings 0,0.5,0.9 --etas 1.0 --rounds 60 --noises 0,4 --noise-couplings 0,0.8 --noise-rounds 60 --seeds 1".split()[1:]
example.main([a.replace("OUT", str(out)) for a in args])
plt.close("all")

# %%
# The figure(s) the script saved.
for png in sorted(out.glob("**/*.png")):
    image = plt.imread(png)
    fig, ax = plt.subplots(figsize=(image.shape[1] / 100, image.shape[0] / 100), layout="constrained")
    ax.imshow(image)
    ax.set_axis_off()
