"""What a user installs: the wheel carries the migrations, and `--help` stays light."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("popvault-*.whl")
    return built


MIGRATIONS = sorted((Path(__file__).parents[1] / "migrations" / "versions").glob("[0-9]*.py"))


@pytest.mark.slow
def test_the_wheel_carries_the_migrations_the_unit_and_the_typed_marker(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "popvault/migrations/env.py" in names
    for migration in MIGRATIONS:
        assert f"popvault/migrations/versions/{migration.name}" in names
    assert "popvault/py.typed" in names
    assert "popvault/systemd/popvault.service" in names
    # The Prometheus alerting rules (README "Alerts"), as the checkout has them.
    alerts = zipfile.ZipFile(wheel).read("popvault/contrib/alerts.yml")
    assert alerts == (ROOT / "src/popvault/contrib/alerts.yml").read_bytes()
    # `popvault init` writes it: a user of the wheel has no checkout to copy it from.
    example = zipfile.ZipFile(wheel).read("popvault/config.example.toml")
    assert example == (ROOT / "config.example.toml").read_bytes()
    assert not any(n.startswith(("tests/", "popvault/tests/")) for n in names)


@pytest.mark.slow
def test_an_installed_wheel_runs_db_upgrade_outside_the_checkout(
    wheel: Path, tmp_path: Path
) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # The dependencies come from this test run's environment (no network), the
    # package itself only from the wheel: a plain path entry, so the editable
    # install's own .pth hook there is not run.
    site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)

    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "config.toml").write_text(
        '[ledger]\nurl = "sqlite:///ledger.sqlite3"\n[archive]\nroot = "archive"\n',
        encoding="utf-8",
    )
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("POPVAULT_")}
    clean_env["PYTHONNOUSERSITE"] = "1"
    where = subprocess.check_output(
        [str(python), "-c", "import popvault; print(popvault.__file__)"],
        cwd=work,
        text=True,
        env=clean_env,
    )
    assert where.startswith(str(site)), f"imported {where} instead of the wheel's copy"
    upgrade = subprocess.run(
        [
            str(python),
            "-c",
            "from popvault.cli import main; raise SystemExit(main())",
            "--config",
            "config.toml",
            "db",
            "upgrade",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        env=clean_env,
        timeout=120,
        check=False,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    # The newest revision of the checkout's migrations (their files start with it).
    assert MIGRATIONS[-1].name[:4] in upgrade.stdout
    assert (work / "ledger.sqlite3").exists()


def test_help_does_not_import_the_heavy_modules() -> None:
    probe = (
        "import sys, contextlib, io\n"
        "from popvault.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "heavy = [m for m in ('sqlalchemy', 'alembic', 'pydantic', 'ssl', 'apscheduler')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.check_output([sys.executable, "-c", probe], text=True)
    assert out.strip() == ""
