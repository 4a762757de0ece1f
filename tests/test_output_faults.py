"""A full disk under the output directory: a clear exit-2 error, and the previous output kept."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from .conftest import cli, cli_in_process, write_config

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_fs(tmp_path):
    """A 256 KiB tmpfs (needs root and mount permission; skipped elsewhere)."""
    mount_point = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()[:120]}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_disk_full_is_exit_2_naming_the_path_and_keeps_previous_output(tiny_fs: Path, tmp_path: Path):
    config = write_config(tmp_path, {"output_dir": str(tiny_fs / "run")})
    first = cli_in_process("ingest", "--config", str(config))  # the small synthetic data fits
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p.name: p.read_bytes() for p in (tiny_fs / "run/ingest").iterdir()}
    # the bundled vic_elec buffer (70 KB) plus what is already there does not fit in what is left
    filler = tiny_fs / "filler"
    free = 256 * 1024 - sum(p.stat().st_size for p in tiny_fs.rglob("*") if p.is_file())
    filler.write_bytes(b"\0" * max(0, free - 40 * 1024))
    result = cli("ingest", "--config", str(config), "data.source=builtin:vic_elec", "data.freq=30min")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "No space left on device" in lines[-1]
    assert str(tiny_fs) in lines[-1]
    assert "Traceback" not in result.stderr
    after = {p.name: p.read_bytes() for p in (tiny_fs / "run/ingest").iterdir()}
    assert after == before


def test_read_only_output_dir_is_exit_2_naming_the_path(tiny_fs: Path, tmp_path: Path):
    """A read-only file system (a remount of the tmpfs): even root cannot write there."""
    config = write_config(tmp_path, {"output_dir": str(tiny_fs / "run")})
    assert cli_in_process("ingest", "--config", str(config)).returncode == 0
    before = {p.name: p.read_bytes() for p in (tiny_fs / "run/ingest").iterdir()}
    remount = subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], capture_output=True)
    if remount.returncode != 0:
        pytest.skip(f"cannot remount read-only here: {remount.stderr.decode().strip()[:120]}")
    try:
        result = cli("ingest", "--config", str(config), "--force")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tiny_fs)], check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and str(tiny_fs / "run") in line and "Read-only file system" in line
    assert "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in (tiny_fs / "run/ingest").iterdir()} == before
