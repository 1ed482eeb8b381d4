"""Random interleavings of runs, killed runs, new mail, dry runs and retention changes.

A Hypothesis state machine drives one workspace against one fake server; the
invariant is checked after every clean run and once more at the end. Killed
runs are real SIGKILLs of a child process (see crash_runner.py).
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from crash_runner import POINTS, run_crashing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule
from invariant_check import (
    WitnessServer,
    account_entry,
    assert_no_secret,
    check_invariant,
    new_workspace,
    wait_until_idle,
)

from popvault.testing import sample_messages


class ArchiveMachine(RuleBasedStateMachine):
    """One account, one server, one archive: anything may happen between clean runs."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="popvault-machine-"))
        self.srv = WitnessServer(sample_messages(3, seed=90)).start()
        self.pool = sample_messages(40, seed=91)
        self.originals = dict(self.srv.mailbox)
        self.ws = new_workspace(self.folder)
        self.retention = "keep"
        self._configure()
        self.srv.watch(self.ws)

    def _configure(self) -> None:
        self.ws.write_config([account_entry(self.srv, retention=self.retention)])

    @rule(retention=st.sampled_from(["keep", "delete"]))
    def set_retention(self, retention: str) -> None:
        self.retention = retention
        self._configure()

    @precondition(lambda self: bool(self.pool))
    @rule()
    def new_mail(self) -> None:
        raw = self.pool.pop()
        self.originals[self.srv.add_message(raw)] = raw

    @rule(
        point=st.sampled_from(sorted(POINTS)),
        when=st.sampled_from(["before", "after"]),
        nth=st.integers(1, 3),
    )
    def killed_run(self, point: str, when: str, nth: int) -> None:
        wait_until_idle(self.srv)
        child = run_crashing(self.ws.config, point, nth, when)
        # 0: the point was not reached in this run (e.g. no DELE with "keep").
        assert child.returncode in (0, -signal.SIGKILL), child.stdout + child.stderr
        assert_no_secret(child.stdout, child.stderr)

    @rule()
    def dry_run(self) -> None:
        wait_until_idle(self.srv)
        before = (self.ws.ledger_dump(), self.ws.archived_files("acct"), self.srv.mailbox)
        seen = len(self.srv.commands)
        result = self.ws.cli("run", "--dry-run")
        assert result.code == 0, result.output
        after = (self.ws.ledger_dump(), self.ws.archived_files("acct"), self.srv.mailbox)
        assert after == before, "a dry run changed something"
        assert not [c for c in self.srv.commands[seen:] if c.startswith(("RETR", "DELE"))]

    @rule()
    def clean_run(self) -> None:
        wait_until_idle(self.srv)
        result = self.ws.cli("run")
        assert result.code == 0, result.output
        assert_no_secret(result.output)
        self._check()

    def _check(self) -> None:
        check_invariant(
            self.ws,
            self.originals,
            self.srv.deleted,
            still_on_server=[uidl for uidl, _ in self.srv.mailbox],
            witnesses=self.srv.witnesses,
        )

    def teardown(self) -> None:
        try:
            self.clean_run()
        finally:
            self.srv.stop()
            shutil.rmtree(self.folder, ignore_errors=True)


ArchiveMachine.TestCase.settings = settings(
    max_examples=12,
    stateful_step_count=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestArchiveMachine = pytest.mark.slow(ArchiveMachine.TestCase)
