"""The documentation builds with warnings as errors, and its HTML has no broken link or missing image.

The full build (``test_docs_build_and_links``) runs Sphinx and the example gallery at small sizes
on a copy of ``docs/`` in a temporary folder, so the repository is left untouched (about 1-2 minutes
on 2 cores); it is skipped when the ``docs`` extra (Sphinx) is not installed.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GENERATED = ("_build", "auto_examples", "sg_execution_times.rst", "__pycache__")


def load_checker():
    spec = importlib.util.spec_from_file_location("check_docs", ROOT / "scripts" / "check_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


def write_site(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "img.png").write_bytes(PNG)
    (root / "empty.png").write_bytes(b"")
    (root / "fake.png").write_bytes(b"GIF89a not a png")
    (root / "sub" / "page.html").write_text('<h1 id="top">x</h1><a href="../index.html#intro">back</a>')
    (root / "index.html").write_text(
        '<p id="intro"><a href="sub/page.html#top">ok</a> <a href="#intro">self</a> '
        '<a href="https://example.org/x">external</a> <a href="sub/">dir</a> <img src="img.png"></p>'
        '<a href="missing.html">gone</a> <a href="sub/page.html#nowhere">bad anchor</a> '
        '<img src="nothere.png"> <img src="empty.png"> <img src="fake.png"> '
        '<link rel="stylesheet" href="_static/style.css?v=1">')


def test_checker_reports_each_broken_link_and_image_and_nothing_else(tmp_path):
    checker = load_checker()
    write_site(tmp_path)
    (tmp_path / "sub" / "index.html").write_text("<p>dir index</p>")
    problems = checker.check_links(tmp_path)
    assert len(problems) == 6, problems
    for needle in ("'missing.html'", "no id 'nowhere'", "'nothere.png'", "'empty.png': empty file",
                   "'fake.png': not a .png image", "_static/style.css"):
        assert sum(needle in p for p in problems) == 1, (needle, problems)


def test_checker_passes_a_clean_site_and_fails_a_broken_one(tmp_path, capsys):
    checker = load_checker()
    clean = tmp_path / "clean"
    (clean / "sub").mkdir(parents=True)
    (clean / "index.html").write_text('<a id="a" href="sub/p.html#b">x</a>')
    (clean / "sub" / "p.html").write_text('<span id="b"></span><a href="../index.html#a">y</a>')
    assert checker.main([str(clean), "--no-api"]) == 0
    (clean / "sub" / "p.html").write_text('<a href="../index.html#b">y</a>')
    assert checker.main([str(clean), "--no-api"]) == 1
    assert "no id 'b' in p.html" in capsys.readouterr().out


def test_api_modules_and_public_names_cover_the_package():
    checker = load_checker()
    sys.path.insert(0, str(DOCS / "_ext"))
    from pfedest_api import public_names

    import pfedest
    import pfedest.theory.rates
    import pfedest.evaluation.report

    modules = checker.api_modules()
    for layer in ("pfedest", "pfedest.estimator", "pfedest.callbacks", "pfedest.checkpoint", "pfedest.settings",
                  "pfedest.validation", "pfedest.fit_state", "pfedest.core.algorithms", "pfedest.core.rounds",
                  "pfedest.core.engine", "pfedest.nn.modules", "pfedest.nn.splits", "pfedest.evaluation.report",
                  "pfedest.evaluation.model_selection", "pfedest.evaluation.plotting", "pfedest.datasets"):
        assert layer in modules, (layer, modules)
    assert set(public_names("pfedest")) == set(pfedest.__all__) - {"__version__"}
    assert public_names("pfedest.theory.rates") == list(pfedest.theory.rates.__all__)
    report_names = public_names("pfedest.evaluation.report")
    assert "client_report" in report_names and "_predict" not in report_names


def test_a_name_several_modules_export_has_one_home_near_its_definition():
    sys.path.insert(0, str(DOCS / "_ext"))
    from pfedest_api import home_module, homes

    modules = load_checker().api_modules()
    assert home_module("pfedest", "HeadSplit", modules) == "pfedest.nn.splits"
    assert home_module("pfedest", "PartialPersonalizedClassifier", modules) == "pfedest.estimator"
    assert home_module("pfedest", "EarlyStopping", modules) == "pfedest.callbacks"
    assert home_module("pfedest.nn.splits", "HeadSplit", modules) == "pfedest.nn.splits"
    # every top-level name is documented in full on the page of its own module, none on the front page
    assert {home for (module, _), home in homes(DOCS).items() if module == "pfedest"}.isdisjoint({"pfedest"})


def write_gallery(root: Path, shown: bool) -> tuple[Path, Path]:
    """A docs folder with one gallery wrapper, its example script, and a built page (code shown or not)."""
    docs, build = root / "docs", root / "html"
    (docs / "gallery_examples").mkdir(parents=True)
    (root / "examples").mkdir()
    (build / "auto_examples").mkdir(parents=True)
    (build / "index.html").write_text("<p>home</p>")
    (docs / "gallery_examples" / "plot_a.py").write_text('from _gallery import run_example\nrun_example("a.py", "")\n')
    (root / "examples" / "a.py").write_text('def main(argv=None):\n    print("a < b")\n')
    code = '<span class="k">def</span> main(argv=None):\n    print(&quot;a &lt; b&quot;)\n' if shown else "main()"
    (build / "auto_examples" / "plot_a.html").write_text(f'<div class="highlight"><pre>{code}</pre></div>')
    return docs, build


@pytest.mark.parametrize("shown", [True, False])
def test_checker_wants_each_gallery_page_to_show_its_example_code(tmp_path, shown):
    checker = load_checker()
    docs, build = write_gallery(tmp_path, shown)
    problems = checker.check_gallery(build, docs)
    assert problems == ([] if shown else ["gallery: plot_a.html does not show the code of examples/a.py"])
    assert checker.main([str(build), "--docs", str(docs), "--no-api"]) == (0 if shown else 1)


def test_every_gallery_wrapper_runs_an_example_through_the_helper():
    checker = load_checker()
    for wrapper in (DOCS / "gallery_examples").glob("plot_*.py"):
        found = checker.RUNS_EXAMPLE.search(wrapper.read_text())
        assert found and (ROOT / "examples" / found.group(1)).is_file(), wrapper.name
        assert f".. literalinclude:: /../examples/{found.group(1)}" in wrapper.read_text(), wrapper.name


def copy_docs(dest: Path) -> Path:
    """A copy of docs/ beside links to the code it includes (literalinclude, gallery wrappers)."""
    shutil.copytree(DOCS, dest / "docs", ignore=shutil.ignore_patterns(*GENERATED))
    for name in ("pfedest", "examples", "benchmarks"):
        (dest / name).symlink_to(ROOT / name, target_is_directory=True)
    return dest / "docs"


@pytest.mark.slow
def test_docs_build_and_links(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("numpydoc")
    pytest.importorskip("sphinx_gallery")
    pytest.importorskip("myst_parser")
    pytest.importorskip("furo")
    docs = copy_docs(tmp_path)
    build = tmp_path / "html"
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                             str(docs), str(build)], capture_output=True, text=True, timeout=420, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-6000:]
    # every example of the gallery ran and drew (quickstart prints a table only)
    images = {p.name for p in (build / "_images").glob("sphx_glr_*_001.png")}
    for wrapper in (docs / "gallery_examples").glob("plot_*.py"):
        if wrapper.stem != "plot_quickstart":
            assert f"sphx_glr_{wrapper.stem}_001.png" in images, (wrapper.stem, sorted(images))
    checker = load_checker()
    assert checker.main([str(build), "--docs", str(docs)]) == 0
