"""``popvault init``: write the commented example config where popvault will look for it.

The example (``config.example.toml``, every key documented) ships inside the
package, so that a user of the wheel has it too: a wheel carries it as
``popvault/config.example.toml``; a source checkout has it at its root.
"""

from __future__ import annotations

import os
from pathlib import Path

from popvault.errors import ConfigError

EXAMPLE_NAME = "config.example.toml"


def example_path() -> Path:
    """Where the example is: installed package data, else the checkout's root."""
    here = Path(__file__).resolve().parent
    for candidate in (here / EXAMPLE_NAME, here.parents[1] / EXAMPLE_NAME):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"popvault is incomplete: its {EXAMPLE_NAME} is missing")


def write_example(target: Path) -> None:
    """Write the example to ``target`` (mode 0600; its folder made 0700 if missing).

    Never overwrites: an existing file is a :class:`FileExistsError`. 0600
    because the file is where passwords may end up (``password = ...``).
    """
    text = example_path().read_bytes()
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(text)
