"""The documentation stands on its own: a fresh clone has every file it points to.

Three checks: no tracked file names a path outside the repository; every relative link
in the README and ``docs/`` reaches a file; the layout table in ``docs/architecture.md``
names only paths that exist and lists every top-level package.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# A path that climbs out of the repository, or a note that only lived beside it. Each name
# is written in pieces, so that this file does not itself name a place outside the repo.
_ABOVE = re.escape("." + "./")
_BESIDE = "sha" + "red"
_NOTES = ("platform" + "-notes", "testing" + "-notes", "style" + r"\.md")
_OUTSIDE = re.compile("|".join([rf"{_ABOVE}{_BESIDE}\b", rf"\b{_BESIDE}/docs\b", *(rf"\b{n}\b" for n in _NOTES)]))
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_CODE_PATH = re.compile(r"`([^`\s]+)`")


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_no_tracked_file_points_outside_the_repository() -> None:
    offenders = []
    for path in _tracked_files():
        if not path.is_file() or "node_modules" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        for number, line in enumerate(text.splitlines(), 1):
            if _OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not offenders, "paths outside the repository:\n" + "\n".join(offenders)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file(doc: Path) -> None:
    broken = []
    for target in _LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, or an anchor on the same page
        resolved = (doc.parent / target.split("#", 1)[0]).resolve()
        if ROOT not in resolved.parents and resolved != ROOT:
            broken.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            broken.append(target)
    assert not broken, f"{doc.name}: links to missing files: {broken}"


def _layout_paths() -> list[str]:
    """First-column paths of the table under ``## Layout`` in docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    paths = []
    for line in section.splitlines():
        cells = line.split("|")
        if len(cells) < 3 or set(cells[1].strip()) <= {"-", ":"}:
            continue
        paths += _CODE_PATH.findall(cells[1])
    return paths


def test_layout_table_names_only_existing_paths() -> None:
    paths = _layout_paths()
    assert len(paths) > 20, "the layout table is missing or unreadable"
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"docs/architecture.md lists paths that do not exist: {missing}"


def test_layout_table_lists_every_top_level_package() -> None:
    listed = {p.rstrip("/") for p in _layout_paths()}
    packages = sorted(
        {
            path.relative_to(ROOT).parts[0]
            for path in _tracked_files()
            if len(path.relative_to(ROOT).parts) == 2 and path.name == "__init__.py"
        }
    )
    assert "signaling" in packages, "package discovery found nothing"
    unlisted = [p for p in packages if p not in listed]
    assert not unlisted, f"top-level packages missing from docs/architecture.md's layout table: {unlisted}"
