"""scripts/demo.sh and scripts/setup.sh as a newcomer runs them, in a copy of the repository's layout.

The copy links the real .venv and an int8 artifact made once per session (the demo would quantize
one), and replaces setup.sh with a no-op for the demo: what runs is the demo's own logic, the real
edgeserver and the real edgeclient.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fakes import SlowRunner, fake_model
from helpers import MakeDaemon

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


def _venv_link(into: Path) -> None:
    """``into/.venv``: the real venv's interpreter, packages and console scripts, with a stamp of its own."""
    venv = into / ".venv"
    (venv / "bin").mkdir(parents=True)
    shutil.copy(VENV / "pyvenv.cfg", venv / "pyvenv.cfg")
    for entry in VENV.iterdir():
        if entry.name not in ("bin", "pyvenv.cfg") and not entry.name.startswith("."):
            (venv / entry.name).symlink_to(entry)
    for exe in (VENV / "bin").iterdir():
        (venv / "bin" / exe.name).symlink_to(exe)


def _checkout(tmp_path: Path, repo: Path | None = None) -> Path:
    root = tmp_path / "edgeinfer"
    (root / "scripts").mkdir(parents=True)
    for script in ("demo.sh", "setup.sh"):
        shutil.copy(ROOT / "scripts" / script, root / "scripts" / script)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    _venv_link(root)
    if repo is not None:
        (root / "scripts" / "setup.sh").write_text("#!/usr/bin/env bash\nexit 0\n")
        (root / "demo-out").mkdir()
        (root / "demo-out" / "model-repo-random").symlink_to(repo)
    return root


def _run(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("PORT", "WEIGHTS")} | (env or {})
    return subprocess.run(
        ["bash", *args], cwd=root, capture_output=True, text=True, timeout=240, env=environment, check=False
    )


@pytest.mark.slow  # a real edgeserver process: torch's imports and the int8 model's load
def test_the_demo_fails_with_its_daemons_error_when_the_port_is_taken(
    make_daemon: MakeDaemon, squeezenet_int8: Any, repo: Path, tmp_path: Path
) -> None:
    """Another daemon (serving squeezenet too) on PORT: the demo must not stream to it and call that success."""
    other = make_daemon(fake_model(SlowRunner()))
    root = _checkout(tmp_path, repo)
    out = _run(root, "scripts/demo.sh", "--max-frames", "5", env={"PORT": str(other.port)})
    assert out.returncode == 1, out.stdout + out.stderr
    assert "demo: edgeserver exited (status 2) before serving:" in out.stderr
    assert "edgeserver: error: " in out.stderr and str(other.port) in out.stderr  # the daemon's own words
    assert not re.search(r"^#0 ", out.stdout, re.M)  # nothing streamed to the other daemon


@pytest.mark.slow
def test_the_demo_starts_its_own_daemon_on_a_free_port(squeezenet_int8: Any, repo: Path, tmp_path: Path) -> None:
    root = _checkout(tmp_path, repo)
    out = _run(root, "scripts/demo.sh", "--max-frames", "5", "--fps", "0")
    assert out.returncode == 0, out.stdout + out.stderr
    started = re.search(r"demo: edgeserver \(pid \d+\) starting on port (\d+)", out.stderr)
    assert started, out.stderr
    log = (root / "demo-out" / "edgeserver.log").read_text()
    assert f":{started[1]}" in log.splitlines()[0] and "edgeserver: SERVING" in log
    assert [line.split()[0] for line in out.stdout.splitlines()[:5]] == [f"#{i}" for i in range(5)]
    assert "summary: sent 5, answered 5" in out.stdout


def _stamp(root: Path, mode: str) -> None:
    digest = hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()
    (root / ".venv" / f".edgeinfer-setup-{mode}").write_text(digest + "\n")


@pytest.mark.parametrize("stamped", ["demo", "test"])  # a test install covers the demo
def test_setup_skips_pip_when_the_install_is_current(tmp_path: Path, stamped: str) -> None:
    root = _checkout(tmp_path)
    _stamp(root, stamped)
    out = _run(root, "scripts/setup.sh", "demo")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == ""  # no pip, no C++ toolchain: the demo needs neither


def test_setup_refuses_an_unknown_mode_in_one_line(tmp_path: Path) -> None:
    out = _run(_checkout(tmp_path), "scripts/setup.sh", "everything")
    assert out.returncode == 2
    assert out.stderr.splitlines() == ["setup: unknown mode 'everything': use demo or test"]
