"""The shipped Prometheus alerting rules (``popvault/contrib/alerts.yml``) and what they read.

promtool (Debian's ``prometheus`` package; ``.ci/test`` unpacks it) checks the
file and runs the unit tests in ``tests/daemon/alerts/``: when each alert
fires and when it stays quiet (``alerts_test.yml``, against a copy without
annotations, so the cases need not repeat every text) and the annotations an
operator reads (``annotations_test.yml``). The metric names the rules and the
test series use must be ones the daemon exports, and the free-space metric
is read from a real scrape of the daemon's endpoint.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from importlib import resources
from pathlib import Path

import pytest
from daemon_helpers import PASSWORD, account, wait_for
from prometheus_client.parser import text_string_to_metric_families

from dovecot import unavailable
from popvault import config as config_module
from popvault.daemon.core import ArchiveDaemon
from popvault.daemon.interval import schedule_interval
from popvault.daemon.metrics import Metrics, MetricsServer
from popvault.ledger import Ledger
from popvault.sync import utc_now
from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace, fake_account

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).resolve().parent / "alerts"
# Where .ci/test unpacks Debian's prometheus package when promtool is not installed.
PROMTOOL_PRIVATE = Path("/opt/popvault-tools/prometheus/usr/bin/promtool")
ALERTS: tuple[str, ...] = (
    "PopvaultAccountNoRecentSuccess",
    "PopvaultAccountFailing",
    "PopvaultArchiveDiskNearlyFull",
    "PopvaultOAuthLoginNeeded",
    "PopvaultOAuthRefreshFailing",
)
# A scrape and the statvfs calls around it see the same file system, but other
# tests may write to it meanwhile: this much change between them is allowed.
FREE_SPACE_SLACK = 8 << 20


def shipped_rules() -> str:
    return resources.files("popvault").joinpath("contrib/alerts.yml").read_text("utf-8")


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool") or (
        str(PROMTOOL_PRIVATE) if PROMTOOL_PRIVATE.is_file() else None
    )
    if found is None:
        unavailable(
            f"promtool is not installed (.ci/test unpacks it to {PROMTOOL_PRIVATE})", "promtool"
        )
    return found


def run_promtool(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def rule_blocks(text: str) -> dict[str, str]:
    """Each alert's lines, by its name (the file's layout: one ``- alert:`` line per rule)."""
    parts = re.split(r"^ *- alert: *(\S+) *$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def without_annotations(text: str) -> str:
    """The rules with every ``annotations:`` block left out (the lines indented under it)."""
    kept: list[str] = []
    depth: int | None = None
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if depth is not None and (not line.strip() or indent > depth):
            continue
        depth = indent if line.strip() == "annotations:" else None
        if depth is None:
            kept.append(line)
    return "\n".join(kept) + "\n"


def expressions(text: str) -> Iterator[str]:
    """The text of each rule's ``expr`` (a one-line value or the block under ``expr: |``)."""
    for block in rule_blocks(text).values():
        match = re.search(r"^( *)expr: *(.*?)\n(.*?)^\1\S", block, re.MULTILINE | re.DOTALL)
        assert match, block
        yield match[2] + "\n" + match[3]


def exported_names(metrics: Metrics) -> set[str]:
    """The series names the daemon's registry exposes, with their type's suffixes."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in metrics.registry.collect()
        for suffix in suffixes[family.type]
    }


# -- the file ----------------------------------------------------------------------


def test_promtool_accepts_the_shipped_rules(promtool: str, tmp_path: Path) -> None:
    (tmp_path / "alerts.yml").write_text(shipped_rules(), encoding="utf-8")
    checked = run_promtool(promtool, "check", "rules", "alerts.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout


def test_the_rules_are_one_group_and_every_alert_says_how_bad_and_what_to_do() -> None:
    text = shipped_rules()
    assert re.findall(r"^  - name: *(\S+)$", text, re.MULTILINE) == ["popvault"]
    blocks = rule_blocks(text)
    assert tuple(blocks) == ALERTS
    for name, block in blocks.items():
        assert re.search(r"^ +for: *\d+m$", block, re.MULTILINE), name
        assert re.search(r"^ +severity: *(warning|critical)$", block, re.MULTILINE), name
        description = block.split("description:", 1)[1]
        assert "summary:" in block, name
        # Names what it is about, and a command or config key to act on.
        assert "{{ $labels.account }}" in description or "{{ $labels.path }}" in description
        assert re.search(r"`(popvault [a-z]|systemctl |\[archive\] root|password)", description)


def test_without_annotations_keeps_everything_else() -> None:
    text = shipped_rules()
    stripped = without_annotations(text)
    assert "annotations:" not in stripped
    assert "description" not in stripped
    assert list(expressions(stripped)) == list(expressions(text))
    for name, block in rule_blocks(stripped).items():
        assert "for:" in block, name
        assert "severity:" in block, name


# -- when they fire ----------------------------------------------------------------


def test_each_alert_fires_and_stays_quiet_as_its_cases_say(promtool: str, tmp_path: Path) -> None:
    (tmp_path / "alerts.yml").write_text(without_annotations(shipped_rules()), encoding="utf-8")
    shutil.copy(CASES / "alerts_test.yml", tmp_path)
    tested = run_promtool(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_annotations_read_as_written(promtool: str, tmp_path: Path) -> None:
    (tmp_path / "alerts.yml").write_text(shipped_rules(), encoding="utf-8")
    shutil.copy(CASES / "annotations_test.yml", tmp_path)
    tested = run_promtool(promtool, "test", "rules", "annotations_test.yml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_cases_can_fail(promtool: str, tmp_path: Path) -> None:
    """A rule that fires too readily fails its cases: the cases check the quiet series too."""
    eager = without_annotations(shipped_rules()).replace(
        "popvault_consecutive_failures) >= 3", "popvault_consecutive_failures) >= 1"
    )
    assert eager != without_annotations(shipped_rules())
    (tmp_path / "alerts.yml").write_text(eager, encoding="utf-8")
    shutil.copy(CASES / "alerts_test.yml", tmp_path)
    tested = run_promtool(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert tested.returncode != 0
    assert 'account="refused"' in tested.stdout + tested.stderr


def test_every_alert_has_cases_that_fire_it_and_cases_that_do_not() -> None:
    cases = (CASES / "alerts_test.yml").read_text(encoding="utf-8")
    annotated = (CASES / "annotations_test.yml").read_text(encoding="utf-8")
    for name in ALERTS:
        checks = re.findall(
            rf"alertname: {name}\n +exp_alerts:(.*?)(?=\n +- eval_time|\Z)", cases, re.DOTALL
        )
        assert any("exp_labels" in check for check in checks), f"{name}: nothing fires it"
        assert f"alertname: {name}\n" in annotated, f"{name}: its annotations are not checked"
    # Quiet series: each group of cases has series that no expected alert names.
    for group in re.split(r"\n  - name: ", cases)[1:]:
        series = set(re.findall(r'account="(\w+)"|path="([^"]+)"', group))
        fired = set(re.findall(r"account: (\w+)|path: (\S+),", group))
        assert series - fired, group.splitlines()[0]


# -- what they read ----------------------------------------------------------------


def test_the_rules_read_only_metrics_the_daemon_exports() -> None:
    exported = exported_names(Metrics())
    used = {
        name for expr in expressions(shipped_rules()) for name in re.findall(r"popvault_\w+", expr)
    }
    assert used, "no metric found in the rules"
    assert used <= exported, used - exported
    # So do the cases: a renamed metric fails them too, not only the rules.
    for case in ("alerts_test.yml", "annotations_test.yml"):
        text = (CASES / case).read_text(encoding="utf-8")
        series = set(re.findall(r"series: *(popvault_\w+)\{", text))
        assert series <= exported, (case, series - exported)


def test_the_free_space_of_the_archive_root_on_a_real_scrape(
    ws: Workspace, server: FakePop3Server
) -> None:
    # The nightly account's mailbox on a server of its own: one mailbox, one session at a time.
    with FakePop3Server(sample_messages(1), username="bob", password=PASSWORD) as other:
        ws.write_config(
            [account("every", server), fake_account(other, "nightly", cron="30 3 * * *")]
        )
        text, before, after = scraped_once_archived(ws)
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    config = config_module.load(ws.config)
    path = (("path", str(config.archive_root)),)
    free = values[("popvault_archive_free_bytes", path)]
    low, high = sorted(fs.f_bavail * fs.f_frsize for fs in (before, after))
    assert low - FREE_SPACE_SLACK <= free <= high + FREE_SPACE_SLACK
    assert values[("popvault_archive_size_bytes", path)] == after.f_blocks * after.f_frsize
    # And the schedules' intervals, which the no-success alert compares with.
    assert values[("popvault_account_interval_seconds", (("account", "every"),))] == 1.0
    nightly = values[("popvault_account_interval_seconds", (("account", "nightly"),))]
    assert nightly == schedule_interval(config.account("nightly").schedule)
    assert 23 * 3600 <= nightly <= 25 * 3600  # a day, or a day across a change of clocks


def scraped_once_archived(
    ws: Workspace,
) -> tuple[str, os.statvfs_result, os.statvfs_result]:
    """The in-process daemon's /metrics over HTTP after its first runs, with statvfs around it."""
    config = config_module.load(ws.config)
    metrics = Metrics()
    with Ledger.open(config.ledger_url) as ledger:
        daemon = ArchiveDaemon(config, ledger, metrics=metrics)
        endpoint = MetricsServer(metrics, "127.0.0.1", 0, lambda: daemon.healthy)
        daemon.start()
        endpoint.start()
        try:
            wait_for(lambda: len(ws.archived_files("every")) == 3, what="the first run")
            before = os.statvfs(ws.archive)
            url = f"http://127.0.0.1:{endpoint.port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as reply:
                text = reply.read().decode()
            after = os.statvfs(ws.archive)
        finally:
            endpoint.stop()
            assert daemon.stop(10.0)
    return text, before, after


def test_the_free_space_follows_the_root_and_skips_one_that_cannot_be_measured(
    tmp_path: Path,
) -> None:
    metrics = Metrics()
    root = tmp_path / "archive"
    metrics.watch_archive(lambda: root)

    def roots() -> dict[str, float]:
        families = {family.name: family for family in metrics.registry.collect()}
        return {s.labels["path"]: s.value for s in families["popvault_archive_free_bytes"].samples}

    assert roots() == {}  # not there yet: no sample, and the scrape still works
    root.mkdir()
    assert list(roots()) == [str(root)]
    root = tmp_path  # a reload that moved [archive] root
    assert list(roots()) == [str(tmp_path)]


def test_an_account_removed_by_a_reload_loses_its_interval() -> None:
    metrics = Metrics()
    metrics.interval.labels("gone").set(900)
    metrics.forget("gone")
    families = {family.name: family for family in metrics.registry.collect()}
    assert families["popvault_account_interval_seconds"].samples == []


# -- the documentation -------------------------------------------------------------


def test_the_readme_names_each_alert_and_how_to_find_the_file() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Alerts", 1)[1].split("\n## ", 1)[0]
    for name in ALERTS:
        assert f"`{name}`" in section, name
    (command,) = re.findall(r"^python -c '(.+)'$", section, re.MULTILINE)
    where = subprocess.check_output([sys.executable, "-c", command], text=True).strip()
    assert Path(where).read_text(encoding="utf-8") == shipped_rules()


@pytest.mark.postgres
def test_on_a_shared_ledger_the_failures_gauge_follows_the_ledger(
    ws: Workspace, server: FakePop3Server, database: str
) -> None:
    """Another daemon's failed runs of the account show in this one's gauge at its heartbeat.

    Else the alert's ``max by (account)`` would keep a count a daemon saw long
    ago, or miss the failures of runs other daemons did.
    """
    ws.write_config([account("acct", server, every="1h")], ledger_url=database)
    config = config_module.load(ws.config)
    metrics = Metrics()
    with Ledger.open(config.ledger_url) as ledger:
        daemon = ArchiveDaemon(config, ledger, metrics=metrics)
        daemon.start()
        try:

            def first_run_done() -> bool:
                planned = daemon.next_run("acct")  # the next one, an hour ahead
                return planned is not None and planned > utc_now()

            wait_for(first_run_done, what="the first run")
            (row,) = ledger.schedules()
            # What another daemon writes after the account's fourth failure in a row.
            ledger.save_schedule(
                replace(
                    row, consecutive_failures=4, daemon_pid=row.daemon_pid + 1, updated_at=utc_now()
                )
            )
            assert failures(metrics) == 0
            daemon.heartbeat()
            assert failures(metrics) == 4
        finally:
            assert daemon.stop(10.0)


def failures(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("popvault_consecutive_failures", {"account": "acct"})
