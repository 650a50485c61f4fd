"""``.. public-names:: module``: an autosummary table of a module's public names, kept in sync.

The public names are the module's ``__all__`` or, without one, the functions and classes defined
in it whose names do not start with an underscore (the same members ``automodule :members:``
documents). Used by the API reference so that a new public function shows up without editing it.
"""

from __future__ import annotations

import importlib
import inspect

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


def public_names(module_name: str) -> list[str]:
    """Public names of ``module_name``: ``__all__`` or its own non-underscore functions and classes."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is not None:
        return [n for n in names if not n.startswith("_")]
    return [n for n, obj in vars(module).items()
            if not n.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
            and obj.__module__ == module_name]


class PublicNames(SphinxDirective):
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        module_name = self.arguments[0]
        lines = [f".. currentmodule:: {module_name}", "", ".. autosummary::", ""]
        lines += [f"   {name}" for name in public_names(module_name)]
        content = StringList(lines, source=self.get_source_info()[0])
        container = nodes.container()
        self.state.nested_parse(content, self.content_offset, container)
        return container.children


def setup(app):
    app.add_directive("public-names", PublicNames)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
