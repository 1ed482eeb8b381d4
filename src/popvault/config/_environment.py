"""``POPVAULT_*`` environment variables: which names mean a setting, and whose value failed.

pydantic-settings silently ignores a variable whose name matches no field
(``POPVAULT_ARCHIVE_ROOT`` for ``POPVAULT_ARCHIVE__ROOT``), so a typo would
leave the file's value in force without a word: :func:`warn_about_unknown`
says so, naming the closest valid name. :func:`variable_for` tells which
variable supplied a value that failed validation, so that the error blames
the variable and not the config file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

from popvault.config._schema import AccountKeys, DaemonSection, Settings

PREFIX: Final = "POPVAULT_"
# Names popvault itself reads from the environment besides the settings.
_OWN: Final = frozenset({"POPVAULT_CONFIG"})
_NESTED: Final = "__"

log = logging.getLogger("popvault.config")


def valid_names() -> list[str]:
    """Every ``POPVAULT_*`` name that means something, upper case, in a stable order."""
    names = sorted(_OWN)
    sections = {
        "ledger": ("url",),
        "archive": ("root",),
        "daemon": tuple(DaemonSection.model_fields),
        "defaults": tuple(AccountKeys.model_fields),
    }
    for section in Settings.model_fields:
        # A whole section as JSON: POPVAULT_ARCHIVE='{"root": "/srv/mail"}'.
        names.append(f"{PREFIX}{section.upper()}")
        keys = sections.get(section, ())
        names += [f"{PREFIX}{section.upper()}{_NESTED}{key.upper()}" for key in keys]
    return names


def _settings_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """Non-empty ``POPVAULT_*`` variables by upper-case name (names ignore case, as for
    the settings; empty ones are ignored there too)."""
    return {
        name.upper(): name
        for name, value in environ.items()
        if value and name.upper().startswith(PREFIX)
    }


def unknown(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``(variable, closest valid name or None)`` for each variable that names no setting.

    Only the first level is judged here: a variable under a known section
    (``POPVAULT_LEDGER__URI``) reaches the settings, which refuse its key with
    an error that :func:`variable_for` attributes to it.
    """
    sections = {f"{PREFIX}{section.upper()}" for section in Settings.model_fields}
    found = []
    for upper, name in sorted(_settings_variables(environ).items()):
        if upper in _OWN or upper.split(_NESTED, 1)[0] in sections:
            continue
        found.append((name, closest_variable(upper)))
    return found


def warn_about_unknown(environ: Mapping[str, str]) -> None:
    """Log one warning per ``POPVAULT_*`` variable that matches no setting."""
    for name, close in unknown(environ):
        hint = f"did you mean {close}?" if close else "see the README's Configuration section"
        log.warning(
            "environment variable %s matches no popvault setting and is ignored (%s)", name, hint
        )


def variable_for(loc: tuple[int | str, ...], environ: Mapping[str, str]) -> str | None:
    """The variable that supplied the value at ``loc``, or None if the file did.

    The environment beats the file, so a variable set for exactly this
    setting supplied it (``("defaults", "timeout")`` -> ``POPVAULT_DEFAULTS__TIMEOUT``);
    a whole section given as JSON supplied a section that failed as a whole.
    Accounts cannot be given key by key: any ``POPVAULT_ACCOUNTS__*`` replaces
    the file's list, so a failure of ``accounts`` is that variable's.
    """
    variables = _settings_variables(environ)
    parts = [str(part).upper() for part in loc]
    exact = PREFIX + _NESTED.join(parts)
    if exact in variables:
        return variables[exact]
    section = f"{PREFIX}{parts[0]}" if parts else ""
    if section in variables and len(parts) == 1:
        return variables[section]
    if parts and parts[0] == "ACCOUNTS":
        given = sorted(name for name in variables if name.startswith(f"{PREFIX}ACCOUNTS"))
        if given:
            return variables[given[0]]
    return None


def closest_variable(name: str) -> str | None:
    """The valid name closest to ``name``, or None when none is close.

    Compared without the common prefix, which would otherwise make every
    name look alike (``POPVAULT_FOO`` is not "close" to ``POPVAULT_DAEMON``).
    """
    # Imported here: only a misspelt variable needs it, and no run of a valid setup does.
    import difflib  # noqa: PLC0415

    valid = {candidate.removeprefix(PREFIX): candidate for candidate in valid_names()}
    close = difflib.get_close_matches(name.upper().removeprefix(PREFIX), valid, n=1, cutoff=0.6)
    return valid[close[0]] if close else None
