"""The API reference's conventions, as a Sphinx extension.

``.. public-names:: module``
    An autosummary table of a module's public names, kept in sync with the code. The public names
    are the module's ``__all__`` or, without one, the functions and classes defined in it whose names
    do not start with an underscore (the same members ``automodule :members:`` documents). A new
    public function shows up without editing the page.

One home per name
    A class or function that several documented modules export (``pfedest.HeadSplit`` is
    ``pfedest.nn.splits.HeadSplit``) is documented in full once, on the page of its *home*: of the
    modules with a ``.. public-names::`` line that export it, the one nearest to where it is defined
    (:func:`home_module`). ``automodule :members:`` on any other page leaves it out, and references to
    it through another module (``:class:`pfedest.HeadSplit```, the tables' entries) resolve to the
    home's entry; a ``:mod:`` reference to a submodule without a page of its own
    (``pfedest.callbacks.base``) resolves to the page of the nearest documented package.
"""

from __future__ import annotations

import importlib
import inspect
from functools import lru_cache
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

DIRECTIVE = ".. public-names::"


def public_names(module_name: str) -> list[str]:
    """Public names of ``module_name``: ``__all__`` or its own non-underscore functions and classes."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is not None:
        return [n for n in names if not n.startswith("_")]
    return [n for n, obj in vars(module).items()
            if not n.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
            and obj.__module__ == module_name]


def api_modules(docs: Path) -> list[str]:
    """Modules named by ``.. public-names::`` in ``docs/api/*.rst``, in file order."""
    modules = []
    for rst in sorted((Path(docs) / "api").glob("*.rst")):
        for line in rst.read_text(encoding="utf-8").splitlines():
            if line.startswith(DIRECTIVE):
                modules.append(line.split("::", 1)[1].strip())
    return modules


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


def home_module(module_name: str, name: str, documented) -> str:
    """The documented module whose page holds the full entry of ``module_name.name``.

    Parameters
    ----------
    module_name : str
        A module that exports ``name``.
    name : str
        One of its public names.
    documented : sequence of str
        The modules the API reference documents (:func:`api_modules`).

    Returns
    -------
    str
        ``module_name`` itself for data and for names no other documented module exports; else, of
        the documented modules that export the same object, the one whose dotted name shares most
        with the object's ``__module__`` (``module_name`` on a tie).
    """
    obj = getattr(importlib.import_module(module_name), name)
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return module_name
    candidates = [m for m in documented
                  if name in _public_set(m) and getattr(importlib.import_module(m), name, None) is obj]
    if module_name not in candidates:
        candidates.append(module_name)
    defined = getattr(obj, "__module__", "") or ""
    return max(candidates, key=lambda m: (_common_prefix(m, defined), m == module_name))


@lru_cache(maxsize=None)
def _public_set(module_name: str) -> frozenset:
    return frozenset(public_names(module_name))


def homes(docs: Path) -> dict:
    """``{(module, name): home}`` for every public name of the modules ``docs/api`` documents."""
    documented = api_modules(docs)
    return {(m, n): home_module(m, n, documented) for m in documented for n in public_names(m)}


def _homes(app) -> dict:
    """:func:`homes` of this build's sources, computed once per build."""
    if getattr(app, "_pfedest_homes", None) is None:
        app._pfedest_homes = homes(Path(app.srcdir))
    return app._pfedest_homes


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


def skip_documented_elsewhere(app, what, name, obj, skip, options):
    """Leave a module's re-exported member to the page of its home."""
    if what != "module":
        return None
    current = getattr(app.env, "current_document", None)  # Sphinx >= 8.2; before, temp_data
    module_name = current.autodoc_module if current is not None else app.env.temp_data.get("autodoc:module")
    home = _homes(app).get((module_name, name))
    if home is not None and home != module_name:
        return True
    return None


def resolve_through_home(app, env, node, contnode):
    """Resolve ``pfedest.HeadSplit`` (or a method of it) to its home's entry."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    table = _homes(app)
    domain = env.get_domain("py")
    if node.get("reftype") == "mod":
        # a submodule without a page of its own (pfedest.callbacks.base): its package's page
        documented = {module for module, _ in table}
        parts = target.split(".")
        for i in range(len(parts) - 1, 1, -1):
            if ".".join(parts[:i]) in documented:
                return domain.resolve_xref(env, node["refdoc"], app.builder, "mod", ".".join(parts[:i]), node,
                                           contnode)
        return None
    guesses = [target] + ([f"{node['py:module']}.{target}"] if node.get("py:module") else [])
    for guess in guesses:
        parts = guess.split(".")
        for i in range(len(parts) - 1, 0, -1):
            home = table.get((".".join(parts[:i]), parts[i]))
            if home is None:
                continue
            if home == ".".join(parts[:i]):
                break
            new_target = ".".join([home, *parts[i:]])
            return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], new_target, node,
                                       contnode)
    return None


def setup(app):
    app.add_directive("public-names", PublicNames)
    app.connect("autodoc-skip-member", skip_documented_elsewhere)
    app.connect("missing-reference", resolve_through_home)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
