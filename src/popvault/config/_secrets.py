"""read_password(): the secret, resolved only when a run needs it."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path

from popvault.config._model import Account, Config
from popvault.errors import ConfigError
from popvault.redaction import register

# Long enough for a password manager to unlock its store; short enough that a hung
# command cannot stall a run forever.
PASSWORD_COMMAND_TIMEOUT: float = 30.0

log = logging.getLogger("popvault.config")

_SHELL_STATUS = {
    126: ", a command it names is not executable",
    127: ", a command it names was not found",
}


# (path, mode) pairs already warned about: a daemon reads a password file on
# every run, and one warning per file and mode is enough to act on.
_warned: set[tuple[Path, int]] = set()


def warn_if_readable_by_others(path: Path, what: str) -> None:
    """Warn (once per file and mode in this process) that a secret is readable by others."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH) and (path, mode) not in _warned:
        _warned.add((path, mode))
        log.warning(
            "%s %s but is readable by group or others (mode %04o); run: chmod 600 %s",
            path,
            what,
            mode,
            path,
        )


def read_password(
    config: Config, account: Account, *, environ: Mapping[str, str] | None = None
) -> str:
    """Resolve ``account``'s password now, from whichever of the four sources it names.

    ``environ`` replaces ``os.environ`` for ``password_env`` and for the environment
    of ``password_command``. Raises :class:`ConfigError` (never quoting the secret).
    """
    file = str(config.file)
    env = os.environ if environ is None else environ
    if account.password is not None:
        key, secret = "password", account.password.get_secret_value()
    elif account.password_env is not None:
        key, secret = "password_env", _from_env(account, env, file)
    elif account.password_file is not None:
        key, secret = "password_file", _from_file(account, account.password_file, file)
    elif account.password_command is not None:
        key = "password_command"
        secret = _from_command(account, account.password_command, config.file, env)
    else:
        raise ConfigError("no password source", file=file, account=account.name)
    # Registered before anything else can fail: from now on every text that
    # reaches a log, an error, the ledger or output has it masked.
    register(secret)
    if not secret or any(char in secret for char in "\r\n\0"):
        # RFC 1939 section 7: PASS takes one line; an empty one is never right.
        message = "the password is empty or contains a line break or NUL"
        raise ConfigError(message, file=file, account=account.name, key=key)
    return secret


def _from_env(
    account: Account,
    environ: Mapping[str, str],
    file: str,
    *,
    variable: str | None = None,
    key: str = "password_env",
) -> str:
    variable = variable or account.password_env or ""
    value = environ.get(variable, "")
    if not value:
        message = f"environment variable {variable} is not set or is empty"
        raise ConfigError(message, file=file, account=account.name, key=key)
    return value


def _from_file(
    account: Account, path: Path, file: str, *, key: str = "password_file", what: str = "password"
) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        message = f"cannot read {what} file {path}: {reason}"
        raise ConfigError(message, file=file, account=account.name, key=key) from None
    warn_if_readable_by_others(path, f"holds the {what} of account {account.name!r}")
    # Exactly one trailing newline is the file's line end; anything else is the secret.
    return text.removesuffix("\n").removesuffix("\r")


def _from_command(
    account: Account,
    command: str,
    config_file: Path,
    environ: Mapping[str, str],
    *,
    key: str = "password_command",
    what: str = "password",
) -> str:
    def fail(message: str) -> ConfigError:
        return ConfigError(message, file=str(config_file), account=account.name, key=key)

    folder = config_file.parent
    try:
        process = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=folder,
            env=dict(environ),
            start_new_session=True,  # its own process group, so a timeout kills its children too
        )
    except OSError as exc:
        raise fail(f"cannot run {key}: {exc.strerror}") from None
    try:
        stdout, stderr = process.communicate(timeout=PASSWORD_COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise fail(f"{key} did not finish within {PASSWORD_COMMAND_TIMEOUT:g} s") from None
    if process.returncode != 0:
        # Neither stream is shown: stdout may hold the password even when the
        # command fails, and stderr may too (a `set -x` in a script echoes every
        # line it runs), in a form nothing can recognise as the password.
        del stdout, stderr
        # POSIX sh: 127 is "command not found", 126 "found but not executable".
        meaning = _SHELL_STATUS.get(process.returncode, "")
        raise fail(
            f"{key} exited with status {process.returncode}{meaning} (its output is not "
            f"shown, since it may contain the {what}: run the command yourself to see why)"
        )
    try:
        return stdout.split(b"\n", 1)[0].removesuffix(b"\r").decode("utf-8")
    except UnicodeDecodeError:
        raise fail(f"{key} printed something that is not UTF-8") from None


def read_client_secret(
    config: Config, account: Account, *, environ: Mapping[str, str] | None = None
) -> str | None:
    """The OAuth 2.0 client secret of ``account``, read now; None if it has none.

    From the one ``oauth_client_secret*`` key the account sets, as
    :func:`read_password` reads a password (and registered for redaction).
    """
    source = None if account.oauth is None else account.oauth.client_secret
    if source is None:
        return None
    file = str(config.file)
    env = os.environ if environ is None else environ
    what = "OAuth client secret"
    if source.kind == "inline":
        secret = source.value
    elif source.kind == "env":
        secret = _from_env(account, env, file, variable=source.value, key=source.key)
    elif source.kind == "file":
        secret = _from_file(account, Path(source.value), file, key=source.key, what=what)
    else:
        secret = _from_command(account, source.value, config.file, env, key=source.key, what=what)
    register(secret)
    if not secret or any(char in secret for char in "\r\n\0"):
        message = "the client secret is empty or contains a line break or NUL"
        raise ConfigError(message, file=file, account=account.name, key=source.key)
    return secret
