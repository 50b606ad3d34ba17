"""The documentation: the site builds with `mkdocs build --strict` (a broken link or anchor, a
missing page or a page left out of the nav fails), the generated reference pages match the code,
and the README stays a short front page whose links resolve."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_is_a_short_front_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250, "README.md is the front page: move detail into docs/"
    for command in ("make demo", "make test"):
        assert command in text


def test_readme_links_resolve() -> None:
    """mkdocs checks the site's links; the README's relative links are checked here."""
    targets = [t for t in LINK.findall(README.read_text(encoding="utf-8")) if "://" not in t]
    assert any(t.startswith("docs/") for t in targets)
    missing = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_reference_pages_are_current() -> None:
    """docs/reference/*.md are committed; they must be what docs/gen_ref.py makes of the code."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_ref.py"), "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, (
        f"{proc.stdout}{proc.stderr}\nregenerate: .venv/bin/python docs/gen_ref.py (or make docs)"
    )


def test_site_builds_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for page in ("index.html", "reference/cli/index.html", "reference/configuration/index.html"):
        assert (site / page).is_file(), page
    assert (site / "img" / "bench" / "serve_load.png").is_file()


def test_bench_plots_draw_from_published_figures(tmp_path: Path) -> None:
    """The benchmarks page's figures: bench/plots.py draws each from bench/published/."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "plots.py"), "--published", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    drawn = sorted(p.name for p in tmp_path.glob("*.png"))
    assert drawn == sorted(p.name for p in (ROOT / "docs" / "img" / "bench").glob("*.png"))
