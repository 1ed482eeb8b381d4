"""The token file: private, atomic, durable, round-trips; expiry arithmetic; cheap to import."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popvault.errors import ReauthorizationRequired
from popvault.oauth import TokenFile, TokenSet, default_token_path, refresh_margin
from popvault.redaction import SECRETS
from popvault.store import durable

ACCESS = "at-Secret-Access-Token-0123456789"
REFRESH = "rt-Secret-Refresh-Token-0123456789"


def _tokens(**values: object) -> TokenSet:
    base: dict[str, object] = {
        "access_token": ACCESS,
        "refresh_token": REFRESH,
        "grant": "device_code",
        "obtained_at": 1_000.0,
        "expires_at": 4_600.0,
        "scopes": ("a", "offline_access"),
        "login_at": 1_000.0,
    }
    base.update(values)
    return TokenSet(**base)  # type: ignore[arg-type]


def test_the_file_is_private_and_round_trips(tmp_path: Path) -> None:
    file = TokenFile(tmp_path / "state" / "tokens" / "work.json", account="work")
    assert file.load() is None
    file.save(_tokens())
    assert file.load() == _tokens()
    assert stat.S_IMODE(file.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(file.path.parent.stat().st_mode) == 0o700
    assert [p.name for p in file.path.parent.iterdir()] == ["work.json"]  # no temp file left


def test_a_save_is_fsynced_then_renamed_then_the_folder_fsynced(tmp_path: Path) -> None:
    file = TokenFile(tmp_path / "work.json", account="work")
    seen: list[durable.Operation] = []
    with durable.observe(seen.append):
        file.save(_tokens())
    kinds = [op.kind for op in seen]
    assert kinds[-3:] == ["write", "file_fsync", "folder_fsync"]
    assert seen[-1].path == tmp_path
    assert seen[0].path.name.endswith(".tmp")  # written under a temp name, never in place


def test_a_kill_during_writes_leaves_a_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "work.json"
    TokenFile(path, account="work").save(_tokens())
    writer = textwrap.dedent(
        f"""
        import secrets, sys
        from popvault.oauth import TokenFile, TokenSet
        file = TokenFile({str(path)!r}, account="work")
        print("ready", flush=True)
        while True:
            big = secrets.token_urlsafe(300_000)   # ~400 KB: many write(2) calls
            file.save(TokenSet(access_token=big, refresh_token=big[:40], grant="device_code",
                               obtained_at=1.0, expires_at=2.0))
        """
    )
    for delay in (0.05, 0.2, 0.4):
        with subprocess.Popen(
            [sys.executable, "-c", writer], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        ) as child:
            assert child.stdout is not None
            assert child.stdout.readline() == b"ready\n"
            time.sleep(delay)
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        tokens = TokenFile(path, account="work").load()  # whole: old or new, never a part
        assert tokens is not None
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_damaged_file_asks_for_a_new_login(tmp_path: Path) -> None:
    path = tmp_path / "work.json"
    path.write_text('{"version": 1, "access_token": ')
    with pytest.raises(ReauthorizationRequired, match="popvault auth login work") as caught:
        TokenFile(path, account="work").load()
    assert str(path) in str(caught.value)


def test_delete(tmp_path: Path) -> None:
    file = TokenFile(tmp_path / "work.json", account="work")
    assert not file.delete()
    file.save(_tokens())
    assert file.delete()
    assert not file.exists()


def test_no_token_in_a_repr() -> None:
    tokens = _tokens()
    for text in (repr(tokens), str(tokens)):
        assert ACCESS not in text
        assert REFRESH not in text
    assert ACCESS in SECRETS  # registered the moment it was held
    assert REFRESH in SECRETS


def test_the_default_path_is_under_the_xdg_state_folder(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}
    assert default_token_path("work", env) == tmp_path / "xdg/popvault/tokens/work.json"
    env["XDG_STATE_HOME"] = "relative/is/ignored"
    assert (
        default_token_path("work", env) == tmp_path / "home/.local/state/popvault/tokens/work.json"
    )
    odd = default_token_path("../a/b", env)
    assert odd.parent == tmp_path / "home/.local/state/popvault/tokens"
    assert "/" not in odd.name
    assert not odd.name.startswith(".")


def test_importing_the_package_and_loading_a_token_file_loads_no_http_library(
    tmp_path: Path,
) -> None:
    path = tmp_path / "work.json"
    TokenFile(path, account="work").save(_tokens())
    script = textwrap.dedent(
        f"""
        import json, sys
        import popvault.oauth
        from popvault.oauth import TokenFile, OAuthClient, preset
        assert TokenFile({str(path)!r}, account="work").load() is not None
        OAuthClient(preset("m365"), "client-id")
        heavy = ("authlib", "httpx", "httpcore", "joserfc", "cryptography", "http.server")
        print(json.dumps(sorted(m for m in sys.modules if m.startswith(heavy))))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(done.stdout) == []


# -- properties --

_times = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)
_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40
)


@st.composite
def _token_sets(draw: st.DrawFn) -> TokenSet:
    obtained = draw(_times)
    lifetime = draw(st.none() | st.floats(min_value=0, max_value=1e7))
    return TokenSet(
        access_token=draw(_text),
        refresh_token=draw(st.none() | _text),
        grant=draw(st.sampled_from(["device_code", "authorization_code", "client_credentials"])),
        obtained_at=obtained,
        expires_at=None if lifetime is None else obtained + lifetime,
        scopes=tuple(draw(st.lists(_text, max_size=4))),
        login_at=obtained,
        last_refresh=draw(st.none() | _times),
    )


@settings(max_examples=60, deadline=None)
@given(tokens=_token_sets())
def test_a_token_set_round_trips_through_the_file(tokens: TokenSet) -> None:
    with tempfile.TemporaryDirectory() as folder:
        file = TokenFile(Path(folder) / "a.json", account="a")
        file.save(tokens)
        assert file.load() == tokens
    SECRETS.clear()


@given(lifetime=st.floats(min_value=1e-3, max_value=1e8), obtained=_times)
def test_a_token_is_refreshed_ahead_of_expiry_but_not_at_once(
    lifetime: float, obtained: float
) -> None:
    margin = refresh_margin(lifetime)
    assert 0 <= margin <= 60
    assert margin <= lifetime / 10 + 1e-9
    tokens = _tokens(obtained_at=obtained, expires_at=obtained + lifetime)
    assert not tokens.needs_refresh(obtained)  # a new token is used, not refreshed
    assert tokens.needs_refresh(obtained + lifetime)  # an expired one never is used
    assert tokens.needs_refresh(obtained + lifetime - margin)
    if lifetime >= 1:
        assert not tokens.needs_refresh(obtained + lifetime - margin - lifetime / 100)


def test_a_token_without_expiry_is_used_until_refused() -> None:
    assert not _tokens(expires_at=None).needs_refresh(1e12)


def test_renewed_keeps_what_a_refresh_does_not_send() -> None:
    renewed = _tokens().renewed({"access_token": "at-new-0123456789", "expires_in": 60}, now=5e3)
    assert renewed.refresh_token == REFRESH  # not rotated
    assert renewed.scopes == _tokens().scopes  # RFC 6749 5.1: no scope = unchanged
    assert renewed.expires_at == 5_060.0
    assert renewed.last_refresh == 5e3
    assert renewed.login_at == 1_000.0
    rotated = _tokens().renewed(
        {"access_token": "at-new-0123456789", "refresh_token": "rt-next-0123456789"}, now=5e3
    )
    assert rotated.refresh_token == "rt-next-0123456789"


def test_the_token_file_is_json_an_operator_can_read(tmp_path: Path) -> None:
    file = TokenFile(tmp_path / "work.json", account="work")
    file.save(_tokens())
    data = json.loads(file.path.read_text())
    assert data["version"] == 1
    assert data["grant"] == "device_code"
    assert os.path.getsize(file.path) < 2000
