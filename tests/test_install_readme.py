"""The README's install commands, run as written from a clean clone, put `popvault` on PATH.

A new user's first five minutes (issue 8): the install block under "Install and run" is run
line for line by bash in the root of a fresh `git clone` of this repository, with a
temporary HOME, and then `popvault` is called by name through PATH alone. pip's cache is
shared with this machine's (PIP_CACHE_DIR), so that the test stays well under a minute.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from popvault import __version__

ROOT = Path(__file__).resolve().parents[1]
# The bare system folders: nothing of this test run (no .venv/bin) may provide `popvault`.
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def install_block(readme: str) -> str:
    """The first ```sh block of the README's "Install and run" section."""
    section = readme.split("\n## Install and run\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "no sh block under 'Install and run'"
    return match[1]


def pip_cache() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def clean_environment(home: Path, path: str) -> dict[str, str]:
    keep = {"LANG", "LC_ALL", "TMPDIR", "PYENV_ROOT", "PYENV_VERSION", "SSL_CERT_FILE"}
    env = {name: value for name, value in os.environ.items() if name in keep}
    env.update(HOME=str(home), PATH=path, PIP_DISABLE_PIP_VERSION_CHECK="1")
    if cache := pip_cache():
        env["PIP_CACHE_DIR"] = cache
    return env


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    target = tmp_path / "popvault"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True, timeout=60)
    return target


@pytest.mark.slow
def test_the_readme_install_commands_work_from_a_clean_clone(clone: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # `python3` as the README says it: this interpreter's base (not a virtual environment).
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "python3").symlink_to(Path(getattr(sys, "_base_executable", sys.executable)))
    block = install_block((clone / "README.md").read_text(encoding="utf-8"))

    installed = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=clone,
        env=clean_environment(home, f"{tools}:{SYSTEM_PATH}"),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert installed.returncode == 0, f"{block}\n--- stdout\n{installed.stdout}\n{installed.stderr}"

    on_path = clean_environment(home, f"{home}/.local/bin:{SYSTEM_PATH}")
    found = shutil.which("popvault", path=on_path["PATH"])
    assert found == str(home / ".local" / "bin" / "popvault")
    version = subprocess.run(
        ["popvault", "--version"], env=on_path, capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"popvault {__version__}"
    # The installed package (not the checkout) carries the example `popvault init` writes.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    init = subprocess.run(
        ["popvault", "init"],
        cwd=elsewhere,
        env=on_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    written = home / ".config" / "popvault" / "config.toml"
    assert written.read_bytes() == (clone / "config.example.toml").read_bytes()
    status = subprocess.run(
        ["popvault", "status"],
        cwd=elsewhere,
        env=on_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert f"archive: {home}/.local/share/popvault/archive" in status.stdout
