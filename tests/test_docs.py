"""The README's promises that can be checked mechanically."""

from pathlib import Path

from pipeline.config.reference import embedded, markdown

REPO = Path(__file__).resolve().parents[1]


def test_readme_opens_with_the_two_commands():
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make demo", "make test"]


def test_config_reference_is_current():
    readme = (REPO / "README.md").read_text()
    assert embedded(readme) == markdown(), "run: python -m pipeline.config.reference --update README.md"
    for key in ["data.source", "window.lookback", "train.mixed_precision", "tracking.mode", "evaluate.season_length"]:
        assert f"`{key}`" in readme


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci/run").read_text()
