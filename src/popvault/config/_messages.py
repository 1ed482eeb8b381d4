"""Turning pydantic's validation errors into ConfigError messages."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Final

from pydantic import ValidationError as PydanticValidationError

from popvault.config._environment import closest_variable, variable_for
from popvault.config._schema import (
    AccountEntry,
    AccountKeys,
    DaemonSection,
    LoadContext,
    Settings,
    is_account_name,
)
from popvault.errors import ConfigError

# Keys whose values are never quoted back in an error: secrets, and URLs that may hold one.
_SECRET_KEYS: Final = frozenset({"password", "password_command", "url"})
_DEFAULT_KEYS: Final = tuple(AccountKeys.model_fields)
_ENTRY_KEYS: Final = tuple(AccountEntry.model_fields)
_SECTION_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "ledger": ("url",),
    "archive": ("root",),
    "daemon": tuple(DaemonSection.model_fields),
}


def translate(exc: PydanticValidationError, context: LoadContext) -> ConfigError:
    """The first problem as the error; any others appended, one a line.

    A value that came from a ``POPVAULT_*`` variable is blamed on the
    variable, not on the file (the environment beats the file).
    """
    problems = [_problem(error, context) for error in exc.errors(include_url=False)]
    variable, account, key, message = problems[0]
    for other in problems[1:]:
        message += f"\n  also {_where(*other)}"
    file = None if variable else str(context.file)
    return ConfigError(message, file=file, account=account, key=key, variable=variable)


def _problem(error: Any, context: LoadContext) -> tuple[str | None, str | None, str | None, str]:
    """(variable, account, key, message): where one problem is, and what it is."""
    variable = variable_for(tuple(error["loc"]), context.environ)
    if variable is None:
        return (None, *_locate(error, context.toml_data))
    return variable, None, None, _describe_variable(error, variable)


def _describe_variable(error: Any, variable: str) -> str:
    if error["type"] == "extra_forbidden":
        close = closest_variable(variable)
        hint = f"did you mean {close}?" if close else "see the README's Configuration section"
        return f"matches no setting ({hint})"
    if str(error["loc"][0]) == "accounts" and error["type"] in ("tuple_type", "list_type"):
        return (
            "accounts cannot be set key by key from the environment; POPVAULT_ACCOUNTS "
            "takes a JSON array of account tables"
        )
    return _describe(error, ())


def _where(variable: str | None, account: str | None, key: str | None, message: str) -> str:
    parts = [
        f"environment variable {variable}" if variable else "",
        f"account {account!r}" if account else "",
        f"key {key!r}" if key else "",
    ]
    return f"{', '.join(part for part in parts if part)}: {message}"


def _locate(error: Any, data: Mapping[str, Any]) -> tuple[str | None, str | None, str]:
    loc = [str(part) for part in error["loc"]]
    section, rest = loc[0], loc[1:]
    if section == "accounts" and rest and isinstance(error["loc"][1], int):
        account = _entry_label(data, error["loc"][1])
        return account, ".".join(rest[1:]) or None, _describe(error, _ENTRY_KEYS)
    if section == "defaults" and rest:
        return "[defaults]", ".".join(rest), _describe(error, _DEFAULT_KEYS)
    if section in _SECTION_KEYS and rest:
        return None, ".".join(loc), _describe(error, _SECTION_KEYS[section])
    return None, section, _describe(error, tuple(Settings.model_fields))


def _entry_label(data: Mapping[str, Any], index: int) -> str:
    """The account's name when its entry has a valid one, else ``accounts[INDEX]`` (0-based)."""
    entries = data.get("accounts")
    entry = entries[index] if isinstance(entries, list) and index < len(entries) else None
    name = entry.get("name") if isinstance(entry, dict) else None
    if is_account_name(name):
        return name
    return f"accounts[{index}]"


def _describe(error: Any, allowed: tuple[str, ...]) -> str:
    kind: str = error["type"]
    loc = error["loc"]
    if kind == "extra_forbidden":
        # Never quote the value: a misspelt "password" key would print the password.
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
        what = "section" if len(loc) == 1 and isinstance(error.get("input"), dict) else "key"
        return f"unknown {what} ({hint})"
    if kind == "missing":
        return "required key is missing"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if kind in ("model_type", "dict_type"):
        return "must be a table (a [section])"
    if kind in ("tuple_type", "list_type"):
        return "must be an array of tables: write each account as [[accounts]]"
    return _with_value(error["msg"], error)


def _with_value(message: str, error: Any) -> str:
    value = error.get("input")
    if str(error["loc"][-1]) in _SECRET_KEYS or not isinstance(value, str | int | float | bool):
        return message
    return f"{message}, got {value!r}"
