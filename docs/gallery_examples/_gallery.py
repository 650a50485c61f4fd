"""Run a script of ``examples/`` at a small size and show the PNGs it wrote: the gallery's one helper.

Each gallery page (``plot_*.py`` here) shows its script whole (a ``literalinclude`` of
``examples/<script>``) and then calls :func:`run_example`; sphinx-gallery puts this folder on
``sys.path`` and draws the figures left open. Not a page itself (``ignore_pattern`` in
``docs/conf.py``).
"""

import importlib.util
import shlex
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(script: str, args: str) -> None:
    """Call ``main`` of ``examples/<script>`` with ``args`` and open a figure per PNG it wrote.

    ``OUT`` in ``args`` stands for a temporary folder, where the script writes its figures.
    """
    spec = importlib.util.spec_from_file_location(Path(script).stem, EXAMPLES / script)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with tempfile.TemporaryDirectory() as out:
        example.main([arg.replace("OUT", out) for arg in shlex.split(args)])
        plt.close("all")
        for png in sorted(Path(out).glob("**/*.png")):
            image = plt.imread(png)
            fig, ax = plt.subplots(figsize=(image.shape[1] / 100, image.shape[0] / 100), layout="constrained")
            ax.imshow(image)
            ax.set_axis_off()
