"""Sphinx configuration of the pfedest documentation.

Build (from the repository root; warnings are errors, as in CI)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The example gallery runs the wrappers in ``docs/gallery_examples/`` (small sizes, a few minutes on
2 CPU cores): each page includes its ``examples/`` script whole and calls the script's ``main``
through ``gallery_examples/_gallery.py``. Set ``PFEDEST_DOCS_NO_GALLERY=1`` to build the pages
without running them.
"""

import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

import pfedest  # noqa: E402

project = "pfedest"
author = "pfedest developers"
copyright = "pfedest developers"
release = pfedest.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "pfedest_api",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "gallery_examples", "auto_examples/*.ipynb", "auto_examples/*.py",
                    "auto_examples/*.zip", "auto_examples/*.codeobj.json"]
templates_path = []
html_static_path = ["_static"]
html_theme = "furo"
html_title = f"pfedest {release}"

# API reference: autosummary tables on hand-written pages (no generated stub files), numpydoc renders
# the docstrings. Class member tables are off: the members are documented under each class.
autosummary_generate = False
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_typehints = "none"
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# flower.md starts at a level-2 heading; it is owned by the Flower page's authors and included as is.
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath", "amsmath"]
suppress_warnings = ["myst.header"]

sphinx_gallery_conf = {
    "examples_dirs": str(DOCS / "gallery_examples"),
    "gallery_dirs": str(DOCS / "auto_examples"),
    "filename_pattern": r"/plot_",
    # _gallery.py (the wrappers' helper) is no page of its own
    "ignore_pattern": r"__init__\.py|(^|[\\/])_\w+\.py$",
    "plot_gallery": "False" if os.environ.get("PFEDEST_DOCS_NO_GALLERY") else "True",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "show_memory": False,
    "reset_modules": ("matplotlib",),
    "capture_repr": (),
}


_STAR_IN_TYPE = re.compile(r"(?<![\\*`])\*(?=[A-Za-z_])")
_PARAM_LINE = re.compile(r"^\s*[\w*, ]+ : ")


def escape_star_args_in_types(app, what, name, obj, options, lines):
    """Escape ``*shape`` in numpydoc type lines (``X : array of shape (n, *shape)``).

    numpydoc copies the type text into reST verbatim, where a bare ``*`` starts emphasis.
    """
    for i, line in enumerate(lines):
        if _PARAM_LINE.match(line) and "``" not in line:
            head, _, kind = line.partition(" : ")
            lines[i] = head + " : " + _STAR_IN_TYPE.sub(r"\\*", kind)


def skip_generated_members(app, what, name, obj, skip, options):
    """Leave out scikit-learn's generated metadata-routing methods (``set_fit_request``...)."""
    if re.fullmatch(r"set_\w+_request", name):
        return True
    return skip


def setup(app):
    app.connect("autodoc-process-docstring", escape_star_args_in_types, priority=400)
    app.connect("autodoc-skip-member", skip_generated_members)
