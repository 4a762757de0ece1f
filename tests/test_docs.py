"""The documents' promises that can be checked mechanically: README.md, docs/ and their links."""

import re
from pathlib import Path

from pipeline.config.reference import embedded, markdown

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_readme_opens_with_the_two_commands():
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make demo", "make test"]


def test_readme_is_at_most_15_kb():
    assert len((REPO / "README.md").read_bytes()) <= 15 * 1024


def test_config_reference_is_current():
    reference = (REPO / "docs" / "config.md").read_text()
    assert embedded(reference) == markdown(), "run: python -m pipeline.config.reference --update docs/config.md"
    for key in ["data.source", "window.lookback", "train.mixed_precision", "tracking.mode", "evaluate.season_length"]:
        assert f"`{key}`" in reference


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci/run").read_text()


def test_relative_links_resolve():
    documents = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for document in documents:
        for target in LINK.findall(document.read_text()):
            if target.startswith(("http://", "https://", "mailto:", "#")):
                continue
            path = target.split("#", 1)[0]
            if not (document.parent / path).is_file():
                broken.append(f"{document.relative_to(REPO)}: {target}")
    assert not broken, "links to missing files: " + ", ".join(broken)
