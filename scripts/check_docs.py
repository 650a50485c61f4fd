"""Check the built documentation: no broken local links, no missing images, every public name present.

Usage (after ``python -m sphinx -W --keep-going -b html docs docs/_build/html``)::

    python scripts/check_docs.py docs/_build/html
    python scripts/check_docs.py docs/_build/html --screenshot shots/   # also headless Chromium

Checks, over every ``.html`` file of the build:

- every local ``href``/``src`` (``a``, ``link``, ``img``, ``script``, ``source``, ``iframe``) resolves
  to an existing file, and a ``#fragment`` to an element ``id`` (or ``name``) of the target page;
- every ``<img>`` is a non-empty file whose bytes start like the image its suffix names;
- every public name of the modules the API reference covers (the ``.. public-names::`` lines of
  ``docs/api/*.rst``) has its anchor in the built API pages: ``id="pfedest.x.name"``, or the anchor
  at its home for a name several of them export (``docs/_ext/pfedest_api.py``);
- every page of the example gallery shows the whole code of the ``examples/`` script it runs.

External links (``http:``, ``https:``, ``mailto:``...) are not fetched: the check works offline.
With ``--screenshot DIR`` and a Chromium binary on the machine (``/usr/bin/chromium``,
``chromium-browser``, ``google-chrome``), the front page and one page per section are opened
headless and screenshotted into DIR; without Chromium that step is skipped with a note.
Exits 1 and lists the problems when any check fails.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LINK_ATTRS = {"a": "href", "link": "href", "img": "src", "script": "src", "source": "src", "iframe": "src"}
MAGIC = {".png": [b"\x89PNG\r\n\x1a\n"], ".jpg": [b"\xff\xd8\xff"], ".jpeg": [b"\xff\xd8\xff"],
         ".gif": [b"GIF87a", b"GIF89a"], ".svg": [b"<?xml", b"<svg"], ".webp": [b"RIFF"]}
CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class _Page(HTMLParser):
    """Collects a page's anchors (``id``/``name``) and its local references."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.anchors: set[str] = set()
        self.refs: list[tuple[str, str]] = []  # (tag, url)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key) and (key == "id" or tag == "a"):
                self.anchors.add(attrs[key])
        attr = LINK_ATTRS.get(tag)
        if attr and attrs.get(attr):
            self.refs.append((tag, attrs[attr]))


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    return page


def is_external(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.scheme) or url.startswith("//")


def check_links(build: Path) -> list[str]:
    """Broken local links and anchors, and missing or unreadable images, as messages."""
    pages = {path.resolve(): parse(path) for path in build.rglob("*.html")}
    problems = []
    for path, page in pages.items():
        where = path.relative_to(build.resolve())
        for tag, url in page.refs:
            if is_external(url):
                continue
            parts = urlsplit(url)
            target = path if not parts.path else (path.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                problems.append(f"{where}: <{tag}> {url!r}: no file {target}")
                continue
            if tag == "img":
                problems += [f"{where}: <img> {url!r}: {msg}" for msg in image_problems(target)]
            fragment = unquote(parts.fragment)
            if fragment and target.suffix == ".html":
                anchors = pages[target].anchors if target in pages else parse(target).anchors
                if fragment not in anchors:
                    problems.append(f"{where}: <{tag}> {url!r}: no id {fragment!r} in {target.name}")
    return problems


def image_problems(path: Path) -> list[str]:
    data = path.read_bytes()[:16]
    if not data:
        return ["empty file"]
    expected = MAGIC.get(path.suffix.lower())
    if expected and not any(data.startswith(m) or m in data for m in expected):
        return [f"not a {path.suffix} image"]
    return []


def _api_extension(docs: Path = DOCS):
    """The docs' ``pfedest_api`` extension (public names, the modules documented, each name's home)."""
    ext = str(docs / "_ext")
    if ext not in sys.path:
        sys.path.insert(0, ext)
    import pfedest_api

    return pfedest_api


def api_modules(docs: Path = DOCS) -> list[str]:
    """Modules named by ``.. public-names::`` in the API reference sources."""
    return _api_extension(docs).api_modules(docs)


def check_api(build: Path, docs: Path = DOCS) -> list[str]:
    """Public names without an anchor in the built API pages.

    A name several documented modules export has its entry on its home's page only
    (``pfedest.HeadSplit`` at ``id="pfedest.nn.splits.HeadSplit"``; see ``docs/_ext/pfedest_api.py``).
    """
    anchors = set()
    for path in (build / "api").glob("*.html"):
        anchors |= parse(path).anchors
    if not api_modules(docs):
        return [f"no '.. public-names::' module in {docs / 'api'}"]
    homes = _api_extension(docs).homes(docs)
    problems = []
    for (module, name), home in homes.items():
        if f"{home}.{name}" not in anchors:
            where = "" if home == module else f" (documented at its home, {home})"
            problems.append(f"API reference: no entry for {module}.{name}{where}")
    return problems


def _pre_texts(path: Path) -> list[str]:
    """The text of every ``<pre>`` block of a page (code, with the highlighting markup removed)."""

    class Pre(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.depth, self.blocks = 0, []

        def handle_starttag(self, tag, attrs):
            if tag == "pre":
                self.depth += 1
                self.blocks.append("")

        def handle_endtag(self, tag):
            if tag == "pre" and self.depth:
                self.depth -= 1

        def handle_data(self, data):
            if self.depth:
                self.blocks[-1] += data

    parser = Pre()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser.blocks


RUNS_EXAMPLE = re.compile(r"""run_example\(\s*["']([\w.-]+\.py)["']""")


def check_gallery(build: Path, docs: Path = DOCS) -> list[str]:
    """Gallery pages that do not show, whole, the code of the example script they run.

    A wrapper ``docs/gallery_examples/plot_x.py`` names its script in ``run_example("name.py", ...)``;
    its page ``auto_examples/plot_x.html`` must hold the text of ``examples/name.py`` in a code block.
    """
    problems = []
    for wrapper in sorted((docs / "gallery_examples").glob("plot_*.py")):
        page = build / "auto_examples" / f"{wrapper.stem}.html"
        found = RUNS_EXAMPLE.search(wrapper.read_text(encoding="utf-8"))
        if found is None:
            problems.append(f"gallery: {wrapper.name} names no script in run_example(\"name.py\", ...)")
            continue
        script = docs.parent / "examples" / found.group(1)
        if not script.is_file():
            problems.append(f"gallery: {wrapper.name} runs {script}, which does not exist")
        elif not page.is_file():
            problems.append(f"gallery: no page {page} for {wrapper.name}")
        else:
            source = script.read_text(encoding="utf-8").strip()
            if not any(source in text for text in _pre_texts(page)):
                problems.append(f"gallery: {page.name} does not show the code of examples/{script.name}")
    return problems


def docstring_gaps(docs: Path = DOCS) -> list[str]:
    """Public functions and classes whose numpydoc docstring lacks Parameters, Returns or Examples.

    Classes are not asked for Returns. An audit for the issue's "every public name has Parameters,
    Returns and Examples"; it is printed by ``--docstrings`` and does not change the exit status.
    """
    import importlib
    import inspect

    from numpydoc.docscrape import ClassDoc, FunctionDoc

    public_names = _api_extension(docs).public_names
    gaps = []
    for module_name in api_modules(docs):
        module = importlib.import_module(module_name)
        for name in public_names(module_name):
            obj = getattr(module, name)
            if inspect.isclass(obj):
                doc, wanted = ClassDoc(obj, config={"show_class_members": False}), ("Parameters", "Examples")
            elif inspect.isfunction(obj):
                doc, wanted = FunctionDoc(obj), ("Parameters", "Returns", "Examples")
            else:
                continue
            lacking = [section for section in wanted if not doc[section]]
            if lacking:
                gaps.append(f"{module_name}.{name}: no {', '.join(lacking)}")
    return gaps


def screenshot(build: Path, out: Path) -> list[str]:
    """Headless-Chromium screenshots of a few pages; returns notes (empty list: nothing to say)."""
    binary = next((shutil.which(b) for b in CHROMIUM if shutil.which(b)), None)
    if binary is None:
        return ["screenshot skipped: no Chromium found (" + ", ".join(CHROMIUM) + ")"]
    out.mkdir(parents=True, exist_ok=True)
    notes = []
    for page in ("index.html", "guide/personalization.html", "api/pfedest.html", "auto_examples/index.html"):
        source = build / page
        if not source.is_file():
            continue
        shot = out / (page.replace("/", "_").removesuffix(".html") + ".png")
        cmd = [binary, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
               "--window-size=1280,1600", f"--screenshot={shot}", source.resolve().as_uri()]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0 or not shot.is_file() or shot.stat().st_size == 0:
            notes.append(f"screenshot of {page} failed: {result.stderr.strip()[-300:]}")
    return notes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", type=Path, nargs="?", default=DOCS / "_build" / "html",
                        help="the built HTML folder (default: docs/_build/html)")
    parser.add_argument("--screenshot", type=Path, default=None, metavar="DIR",
                        help="also open pages in headless Chromium and save screenshots into DIR")
    parser.add_argument("--docs", type=Path, default=DOCS,
                        help="the documentation sources the build came from (default: docs/)")
    parser.add_argument("--docstrings", action="store_true",
                        help="also list public names whose docstring lacks Parameters/Returns/Examples "
                             "(informational: does not change the exit status)")
    parser.add_argument("--no-api", action="store_true", help="skip the check of the API reference's names")
    parser.add_argument("--no-gallery", action="store_true",
                        help="skip the check that each gallery page shows its example's code")
    args = parser.parse_args(argv)
    if not (args.build / "index.html").is_file():
        print(f"{args.build} has no index.html: build the docs first", file=sys.stderr)
        return 2
    problems = check_links(args.build)
    if not args.no_api:
        problems += check_api(args.build, args.docs)
    if not args.no_gallery and (args.build / "auto_examples").is_dir():
        problems += check_gallery(args.build, args.docs)
    failed_shots = []
    if args.screenshot is not None:
        notes = screenshot(args.build, args.screenshot)
        failed_shots = [n for n in notes if "failed" in n]
        for note in notes:
            print(note)
    if args.docstrings:
        gaps = docstring_gaps(args.docs)
        for gap in gaps:
            print("docstring:", gap)
        print(f"{len(gaps)} public names with an incomplete docstring")
    n_pages = sum(1 for _ in args.build.rglob("*.html"))
    for problem in problems + failed_shots:
        print(problem)
    print(f"{n_pages} pages checked: {len(problems)} broken links, missing images, API entries or example code"
          + (f", {len(failed_shots)} failed screenshots" if failed_shots else ""))
    return 1 if problems or failed_shots else 0


if __name__ == "__main__":
    sys.exit(main())
