"""
Who gains and who loses: the per-client report
==============================================

Who gains and who loses: a personalized model against FedAvg, client by client
(``pfedest.evaluation.report.client_report``). See :doc:`/guide/report`.

Full size: ``python examples/plot_client_report.py``. Here, for the documentation build: ``plot_client_report.py --clients 8 --rounds 5 --out OUT/client_report.png``.
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
spec = importlib.util.spec_from_file_location("plot_client_report", EXAMPLES / "plot_client_report.py")
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)

out = Path(tempfile.mkdtemp())
args = "plot_client_report.py --clients 8 --rounds 5 --out OUT/client_report.png".split()[1:]
example.main([a.replace("OUT", str(out)) for a in args])
plt.close("all")

# %%
# The figure(s) the script saved.
for png in sorted(out.glob("**/*.png")):
    image = plt.imread(png)
    fig, ax = plt.subplots(figsize=(image.shape[1] / 100, image.shape[0] / 100), layout="constrained")
    ax.imshow(image)
    ax.set_axis_off()
