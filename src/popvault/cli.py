"""The ``popvault`` command: argument parsing, exit codes, output.

Exit status: 0 when every account succeeded, 1 when any failed, 2 for a usage
or configuration error. Heavy modules (SQLAlchemy, ssl, pydantic) are imported
inside the command functions so that ``popvault --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from popvault import __version__
from popvault.humanize import human_size

if TYPE_CHECKING:
    from popvault.config import Account, Config
    from popvault.ledger import Ledger
    from popvault.progress import TerminalProgress
    from popvault.sync import RunResult

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
# Standard output closed early (`popvault run --dry-run | head`): the status a shell
# reports for a process killed by SIGPIPE, as `yes | head` gives it, so that
# `set -o pipefail` scripts see what they already handle, and never "an account failed".
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command (also used by the docs test)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="config file (default: $POPVAULT_CONFIG, else ~/.config/popvault/config.toml)",
    )
    common.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=["debug", "info", "warning", "error"],
        help="how much to log on standard error (default: warning; info for daemon)",
    )
    parser = argparse.ArgumentParser(
        prog="popvault",
        description="Incremental POP3 mailbox archiver.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"popvault {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", parents=[common], help="archive new messages of every account, once"
    )
    _add_account_option(run)
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="list what would be downloaded and deleted; change nothing",
    )
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="try again the messages set aside after failing repeatedly",
    )
    run.add_argument(
        "--archive-again",
        action="store_true",
        help="archive even when an account's folder holds files the ledger does not know "
        "(a lost ledger): every message still on the server is stored a second time",
    )
    run.set_defaults(func=cmd_run)

    status = commands.add_parser("status", parents=[common], help="show each account's state")
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.set_defaults(func=cmd_status)

    verify = commands.add_parser(
        "verify",
        parents=[common],
        help="re-read every archived file and check it against the ledger",
    )
    _add_account_option(verify)
    verify.add_argument("--json", action="store_true", help="print JSON for scripts")
    verify.set_defaults(func=cmd_verify)

    held = commands.add_parser(
        "held",
        parents=[common],
        help="list the server copies kept because the server sent something else than it "
        "listed; --release lets retention delete them",
    )
    _add_account_option(held)
    held.add_argument(
        "--release",
        action="store_true",
        help="release the holds of the selected accounts (all, or those of --uidl)",
    )
    held.add_argument(
        "--uidl",
        action="append",
        metavar="UIDL",
        help="with --release: only the message(s) under this UIDL (repeat for several)",
    )
    held.add_argument("--json", action="store_true", help="print JSON for scripts")
    held.set_defaults(func=cmd_held)

    _add_import_parser(commands, common)

    daemon = commands.add_parser(
        "daemon",
        parents=[common],
        help="archive every account on its schedule until stopped (for systemd)",
    )
    daemon.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="text lines, or one JSON object per line for log shippers (default: text)",
    )
    daemon.set_defaults(func=cmd_daemon)

    demo = commands.add_parser(
        "demo", parents=[common], help="archive a bundled fake mailbox, to see popvault work"
    )
    demo.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="folder for the demo's config, ledger and archive (default: a new temp folder)",
    )
    demo.add_argument("--messages", type=int, default=36, help="how many sample messages")
    demo.set_defaults(func=cmd_demo)

    init = commands.add_parser(
        "init",
        parents=[common],
        help="write a commented example config (mode 0600) where popvault looks for it, "
        "or at --config; never overwrites",
    )
    init.set_defaults(func=cmd_init)

    _add_auth_commands(commands, common)

    db = commands.add_parser("db", parents=[common], help="ledger database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    upgrade = db_commands.add_parser(
        "upgrade", parents=[common], help="apply the ledger's schema migrations"
    )
    upgrade.set_defaults(func=cmd_db_upgrade)
    check = db_commands.add_parser(
        "check", parents=[common], help="exit 1 unless the ledger's schema is current"
    )
    check.set_defaults(func=cmd_db_check)
    copy = db_commands.add_parser(
        "copy",
        parents=[common],
        help="copy the ledger to another database (SQLite or PostgreSQL) and verify the copy; "
        "the archive files do not move",
    )
    copy.add_argument(
        "--to", required=True, metavar="URL", help="the target database URL (created if new)"
    )
    copy.add_argument(
        "--from",
        dest="source",
        metavar="URL",
        default=None,
        help="the source database URL (default: the config's [ledger] url)",
    )
    copy.add_argument(
        "--force",
        action="store_true",
        help="empty the target's popvault tables first (in the copy's transaction) "
        "instead of refusing a target that holds rows",
    )
    copy.set_defaults(func=cmd_db_copy)
    return parser


def _add_auth_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """``popvault auth login | status | logout`` (issue 10)."""
    auth = commands.add_parser(
        "auth", parents=[common], help="OAuth 2.0 sign-in of accounts (Gmail, Outlook, M365)"
    )
    auth_commands = auth.add_subparsers(dest="auth_command", required=True, metavar="AUTH_COMMAND")
    auth_login = auth_commands.add_parser(
        "login",
        parents=[common],
        help="sign an account in and keep its tokens (a device code, or a browser)",
    )
    auth_login.add_argument("name", metavar="ACCOUNT")
    how = auth_login.add_mutually_exclusive_group()
    how.add_argument(
        "--device",
        dest="grant",
        action="store_const",
        const="device",
        help="show a URL and a code to enter on any device (a headless machine)",
    )
    how.add_argument(
        "--browser",
        dest="grant",
        action="store_const",
        const="browser",
        help="sign in with a browser on this machine (a redirect to 127.0.0.1)",
    )
    auth_login.add_argument(
        "--no-open",
        action="store_true",
        help="with --browser: only print the address, do not start a browser",
    )
    auth_login.set_defaults(func=cmd_auth_login, grant=None)
    auth_status = auth_commands.add_parser(
        "status", parents=[common], help="show each OAuth account's tokens (never a secret)"
    )
    _add_account_option(auth_status)
    auth_status.add_argument("--json", action="store_true", help="print JSON for scripts")
    auth_status.set_defaults(func=cmd_auth_status)
    auth_logout = auth_commands.add_parser(
        "logout",
        parents=[common],
        help="revoke an account's grant (where the provider can) and delete its tokens",
    )
    auth_logout.add_argument("name", metavar="ACCOUNT")
    auth_logout.add_argument(
        "--keep-grant",
        action="store_true",
        help="only delete the local tokens; do not ask the provider to revoke them",
    )
    auth_logout.set_defaults(func=cmd_auth_logout)


def _add_import_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """``popvault import TOOL FILE --account NAME``: another fetcher's state, no download."""
    importer = commands.add_parser(
        "import",
        parents=[common],
        help="record what getmail6, fetchmail or mpop already retrieved (their state file, "
        "or a Maildir they wrote), so that popvault does not download it again",
        description="Record the messages another fetcher already retrieved as archived "
        "elsewhere: the UIDLs its state file names, or (maildir) the server's messages "
        "matched to the files of a Maildir by their headers (TOP n 0, no body downloaded). "
        "popvault never downloads them, and never deletes them from the server unless "
        "--allow-delete. Importing the same again changes nothing.",
    )
    # popvault.adopt.STATE_FILE_TOOLS and maildir, spelled out: `--help` must not
    # import the run's modules.
    tools = ("getmail6", "fetchmail", "mpop", "maildir")
    importer.add_argument("tool", choices=tools, help="the tool that wrote FILE, or maildir")
    importer.add_argument(
        "file",
        type=Path,
        metavar="FILE",
        help="its state file (getmail6's oldmail-* file, fetchmail's .fetchids, mpop's "
        "uidls file), or the Maildir's folder",
    )
    importer.add_argument("--account", required=True, metavar="NAME", help="the account")
    importer.add_argument(
        "--dry-run",
        action="store_true",
        help="record nothing; show what would be imported and how many the server lists now",
    )
    importer.add_argument(
        "--allow-delete",
        action="store_true",
        help="let retention delete these server copies by the account's policy; only if the "
        "other tool's archive is kept: popvault holds no copy of them",
    )
    importer.set_defaults(func=cmd_import)


def _add_account_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--account",
        action="append",
        metavar="NAME",
        help="only this account (repeat for several)",
    )


def _selected_accounts(cfg: Config, args: argparse.Namespace) -> list[Account]:
    """The accounts named with --account (a ConfigError for an unknown one), else all."""
    return [cfg.account(name) for name in args.account] if args.account else list(cfg.accounts)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``popvault`` console script."""
    args = build_parser().parse_args(argv)
    from popvault.redaction import install_log_redaction, redact

    install_log_redaction()
    _setup_logging(getattr(args, "log_level", "warning"))
    from popvault.errors import ConfigError, LedgerError, PopvaultError

    try:
        status: int = args.func(args)
        # Flushed here, not at exit: a reader that went away must be noticed inside the try.
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except ConfigError as exc:
        print(f"popvault: configuration error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except LedgerError as exc:
        print(f"popvault: ledger error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except PopvaultError as exc:
        print(f"popvault: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("popvault: interrupted", file=sys.stderr)
        return 130
    return status


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so that the flush at exit cannot fail again.

    Python's documented recipe for SIGPIPE (the ``signal`` module's notes): the
    reader is gone, whatever is still buffered has nowhere to go.
    """
    # OSError/ValueError: stdout is no real file (redirected in-process, or closed).
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _setup_logging(level: str) -> None:
    # Imported here, not at the top: `popvault --help` and `--version` exit inside
    # parse_args, before any logging, and logging with what it loads (traceback,
    # threading, string) is a tenth of their time (~5 ms of ~40 ms).
    import logging

    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _load_config(args: argparse.Namespace) -> Config:
    from popvault import config

    return config.load(getattr(args, "config", None))


def _open_ledger(cfg: Config, *, create: bool = True, upgrade: bool = True) -> Ledger:
    """Open the ledger (migrating it unless ``upgrade`` is false).

    With ``create`` false, a SQLite ledger file that does not exist yet is not
    made: an empty in-memory ledger stands in, so that `status`, `verify` and
    `run --dry-run` on a new setup leave no file behind.
    """
    from popvault.ledger import Ledger
    from popvault.ledger.engine import parse_url, sqlite_file

    path = sqlite_file(parse_url(cfg.ledger_url))
    if not create and path is not None and not path.exists():
        return Ledger.open("sqlite://")
    return Ledger.open(cfg.ledger_url, upgrade=upgrade)


def cmd_run(args: argparse.Namespace) -> int:
    """``popvault run``: one pass over the (selected) accounts."""
    from popvault.archive_root import check_archive_root
    from popvault.sync import sync_accounts

    cfg = _load_config(args)
    accounts = _selected_accounts(cfg, args)
    if not accounts:
        print(f"popvault: no accounts in {cfg.file}", file=sys.stderr)
        return EXIT_USAGE
    # What the imports and the config made (a few hundred thousand objects) lives
    # until the process ends: frozen, later full collections do not walk it again
    # (the use gc.freeze is documented for), which is much of a collection's cost.
    gc.freeze()
    progress = _terminal_progress()
    # A dry run changes nothing: not even the ledger's schema or its file.
    dry = bool(args.dry_run)
    with _open_ledger(cfg, create=not dry, upgrade=not dry) as ledger:
        # An archive root that is not this ledger's stops the run before any account.
        check_archive_root(cfg, ledger, accounts, create=not dry)
        results = sync_accounts(
            cfg,
            accounts,
            ledger,
            dry_run=args.dry_run,
            retry_failed=args.retry_failed,
            progress=progress,
            archive_again=args.archive_again,
        )
    if progress is not None:
        progress.close()
    _print_summary(results, dry_run=args.dry_run)
    return _run_status(results)


def _terminal_progress() -> TerminalProgress | None:
    """A progress bar when standard error is a terminal; its module is loaded only then."""
    if not sys.stderr.isatty():
        return None
    from popvault.progress import TerminalProgress

    return TerminalProgress()


def _run_status(results: Sequence[RunResult]) -> int:
    """2 when an account's configuration failed it (a password that cannot be read: the
    other accounts still ran), else 1 when any account failed, else 0."""
    from popvault.errors import ConfigError

    if any(isinstance(result.exception, ConfigError) for result in results):
        return EXIT_USAGE
    return EXIT_OK if all(result.ok for result in results) else EXIT_FAILED


def _print_summary(results: Sequence[RunResult], *, dry_run: bool) -> None:
    from popvault.errors import ConfigError
    from popvault.sync import MAX_ATTEMPTS

    for result in results:
        if isinstance(result.exception, ConfigError):
            # Nothing was fetched: the run stopped before connecting; say what to fix.
            print(f"{result.account}: FAILED: configuration error: {result.error}")
        elif dry_run:
            _print_dry_run(result)
        elif result.ok:
            print(f"{result.account}: ok, {_counts(result)}")
        else:
            print(f"{result.account}: FAILED ({_counts(result)}): {result.error}")
        if result.held:
            print(
                f"  {len(result.held)} message(s) archived as received but kept on the server: "
                "the server sent other octets than it listed (`popvault held` shows why)"
            )
        if result.set_aside:
            print(
                f"  {len(result.set_aside)} message(s) set aside after {MAX_ATTEMPTS} failed "
                "attempts; `popvault run --retry-failed` tries them again"
            )
    failed = sum(1 for result in results if not result.ok)
    print(f"{len(results)} account(s), {failed} failed")


def _counts(result: RunResult) -> str:
    # Downloaded: octets on the wire (CRLF line ends); `status` shows stored octets,
    # which a Maildir keeps with LF line ends: the two are labelled, not equal.
    left = "unknown" if result.left_on_server is None else str(result.left_on_server)
    parts = [
        f"{result.messages} new message(s)",
        f"{human_size(result.octets)} downloaded",
        f"{left} on server",
    ]
    if result.deleted:
        parts.append(f"{result.deleted} deleted from server")
    if result.recovered:
        parts.append(f"{result.recovered} recovered from an interrupted run")
    if result.sessions > 1:  # a server that hands out a window of the mailbox (Gmail)
        parts.append(f"in {result.sessions} sessions")
    return ", ".join(parts)


def _on_server(result: RunResult) -> str:
    """The server's message count, or "unknown" when the run never got its listing."""
    return "unknown" if result.on_server is None else str(result.on_server)


def _print_dry_run(result: RunResult) -> None:
    if not result.ok:
        print(f"{result.account}: FAILED: {result.error}")
        return
    octets = sum(message.size for message in result.planned)
    print(
        f"{result.account}: would download {len(result.planned)} of {_on_server(result)} "
        f"message(s), {human_size(octets)}; "
        f"would delete {len(result.due_for_deletion) + len(result.imported_due)}"
    )
    for message in result.planned:
        print(f"  download message {message.number} ({message.size} octets)")
    for retained in result.due_for_deletion:
        when = retained.archived_at.strftime("%Y-%m-%d %H:%M")
        print(f"  remove server copy of {retained.path} (archived {when} UTC)")
    for uidl in result.imported_due:
        print(f"  remove server copy of UIDL {uidl!r} (archived elsewhere, imported)")


def cmd_status(args: argparse.Namespace) -> int:
    """``popvault status``: per account, what is archived and how the last run went."""
    from datetime import UTC, datetime  # only `status` needs the clock; `--help` skips it

    from popvault.status import account_statuses, render_json, render_locations, render_table

    cfg = _load_config(args)
    with _open_ledger(cfg, create=False) as ledger:
        rows = account_statuses(cfg, ledger, now=datetime.now(UTC))
    if args.json:
        print(render_json(rows))
    else:
        print(f"{render_locations(cfg)}\n\n{render_table(rows)}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    """``popvault verify``: exit 1 when any file is missing, changed or unknown."""
    import json

    from popvault.verify import report_dict, verify_account

    cfg = _load_config(args)
    accounts = _selected_accounts(cfg, args)
    with _open_ledger(cfg, create=False) as ledger:
        reports = [verify_account(cfg, account, ledger) for account in accounts]
    if args.json:
        print(json.dumps([report_dict(report) for report in reports], indent=2))
    else:
        for report in reports:
            verdict = "ok" if report.ok else f"{len(report.problems)} problem(s)"
            print(
                f"{report.account}: {report.checked} file(s), "
                f"{human_size(report.checked_bytes)} verified, {verdict}"
            )
            for problem in report.problems:
                print(f"  {problem.kind}: {problem.path}: {problem.detail}")
            for held in report.held:
                print(f"  held on the server: {held}")
    return EXIT_OK if all(report.ok for report in reports) else EXIT_FAILED


def cmd_held(args: argparse.Namespace) -> int:
    """``popvault held [--release]``: list or release the holds on server copies."""
    from popvault import held

    cfg = _load_config(args)
    accounts = _selected_accounts(cfg, args)
    if args.uidl and not args.release:
        print("popvault: --uidl goes with --release", file=sys.stderr)
        return EXIT_USAGE
    if args.release:
        with _open_ledger(cfg) as ledger:
            for account in accounts:
                count = held.release(ledger, account, args.uidl or [])
                print(f"{account.name}: released {count} hold(s); retention applies to them")
        return EXIT_OK
    with _open_ledger(cfg, create=False) as ledger:
        holds = held.list_holds(ledger, accounts)
    print(held.render_json(holds) if args.json else held.render_text(holds))
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    """``popvault import TOOL FILE --account NAME``: record another tool's retrieved UIDLs."""
    from popvault import adopt
    from popvault.sync import utc_now

    cfg = _load_config(args)
    account = cfg.account(args.account)
    with _open_ledger(cfg, create=not args.dry_run) as ledger:
        lines = adopt.run_import(
            cfg,
            account,
            ledger,
            args.tool,
            args.file,
            allow_delete=args.allow_delete,
            dry_run=args.dry_run,
            now=utc_now,
        )
    for line in lines:
        print(line)
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    """``popvault init``: write the example config; 1 if a file is already there."""
    from popvault.config import default_config_path
    from popvault.init_config import write_example

    given = getattr(args, "config", None)
    target = Path(given).expanduser() if given is not None else default_config_path()
    try:
        write_example(target)
    except FileExistsError:
        print(
            f"popvault: {target} already exists; not overwriting it (edit it, or name "
            "another file with --config)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except OSError as exc:
        print(f"popvault: cannot write {target}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"wrote {target} (mode 0600), a commented example: replace its [[accounts]] with "
        "yours, then `popvault run --dry-run`"
        + (f" --config {target}" if given is not None else "")
    )
    return EXIT_OK


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """``popvault db upgrade``: bring the ledger's schema up to date."""
    from popvault.ledger import migrate

    cfg = _load_config(args)
    migrate.upgrade(cfg.ledger_url)
    print(f"ledger schema is at {migrate.current(cfg.ledger_url)}")
    return EXIT_OK


def cmd_db_check(args: argparse.Namespace) -> int:
    """``popvault db check``: 0 when the schema is current, 1 (with the fix) when not."""
    from popvault.ledger import migrate

    cfg = _load_config(args)
    migrate.check(cfg.ledger_url)
    print(f"ledger schema is current ({migrate.current(cfg.ledger_url)})")
    return EXIT_OK


def cmd_db_copy(args: argparse.Namespace) -> int:
    """``popvault db copy --to URL``: 0 once the copy is made and verified, 1 when refused
    or when the verification finds a difference (the target is then left as it is)."""
    from popvault.ledger.copy import copy_ledger, report_lines
    from popvault.ledger.engine import parse_url
    from popvault.redaction import redact, register

    source = args.source if args.source is not None else _load_config(args).ledger_url
    for url in (source, args.to):
        password = parse_url(url).password
        if password:
            register(str(password))
    result = copy_ledger(source, args.to, force=args.force)
    print("\n".join(redact(line) for line in report_lines(result)))
    return EXIT_OK


def cmd_daemon(args: argparse.Namespace) -> int:
    """``popvault daemon``: run every account on its schedule until SIGTERM or SIGINT."""
    from popvault.daemon import run_daemon
    from popvault.daemon.logs import setup_logging

    # One line per run is logged at info: that is the daemon's default level.
    setup_logging(getattr(args, "log_level", "info"), args.log_format)
    cfg = _load_config(args)
    if not cfg.accounts:
        print(f"popvault: no accounts in {cfg.file}", file=sys.stderr)
        return EXIT_USAGE
    gc.freeze()  # as in cmd_run: the start-up objects live as long as the daemon
    return run_daemon(cfg)


def cmd_auth_login(args: argparse.Namespace) -> int:
    """``popvault auth login ACCOUNT``: sign in with OAuth 2.0, keep the tokens."""
    from popvault import authcli

    cfg = _load_config(args)
    account = authcli.oauth_account(cfg, args.name)
    authcli.login(cfg, account, grant=args.grant, open_browser=not args.no_open)
    return EXIT_OK


def cmd_auth_status(args: argparse.Namespace) -> int:
    """``popvault auth status``: every OAuth account's tokens; 1 if one needs a login."""
    from popvault import authcli

    cfg = _load_config(args)
    names = args.account or [a.name for a in cfg.accounts if a.oauth is not None]
    accounts = [authcli.oauth_account(cfg, name) for name in names]
    if not accounts:
        print("popvault: no account signs in with OAuth 2.0", file=sys.stderr)
        return EXIT_OK
    return authcli.status(cfg, accounts, as_json=args.json, out=sys.stdout)


def cmd_auth_logout(args: argparse.Namespace) -> int:
    """``popvault auth logout ACCOUNT``: revoke and forget the account's tokens."""
    from popvault import authcli

    cfg = _load_config(args)
    account = authcli.oauth_account(cfg, args.name)
    return authcli.logout(cfg, account, revoke=not args.keep_grant, out=sys.stdout)


def cmd_demo(args: argparse.Namespace) -> int:
    """``popvault demo``: archive a bundled fake mailbox into a folder it names."""
    from popvault.demo import run_demo

    return run_demo(args.dir, messages=args.messages)
