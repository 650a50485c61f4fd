"""
Quickstart: personalized against FedAvg and local training
==========================================================

Partial personalization against its two baselines, FedAvg (nothing personal) and local training
(everything personal), on clients whose features and labels are shifted: the table printed below
compares the mean, weighted mean and worst-client accuracy of each.

Full size: ``python examples/quickstart.py``. Here, for the documentation build: ``quickstart.py --clients 8 --rounds 10``.
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
spec = importlib.util.spec_from_file_location("quickstart", EXAMPLES / "quickstart.py")
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)

out = Path(tempfile.mkdtemp())
args = "quickstart.py --clients 8 --rounds 10".split()[1:]
example.main([a.replace("OUT", str(out)) for a in args])
plt.close("all")

# %%
# The figure(s) the script saved.
for png in sorted(out.glob("**/*.png")):
    image = plt.imread(png)
    fig, ax = plt.subplots(figsize=(image.shape[1] / 100, image.shape[0] / 100), layout="constrained")
    ax.imshow(image)
    ax.set_axis_off()
