"""A real SoftHSM2 token for tests: a private token directory and config per test session.

SoftHSM reads ``SOFTHSM2_CONF`` when the library is initialised, so the session fixture
sets it in this process's environment (server processes started by the tests inherit
it). Each test gets its own token (unique label) in that directory. Needs Debian's
``softhsm2`` package (``apt-get install -y softhsm2``); a missing package fails loudly.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

LIB_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
PIN = "1234"
SO_PIN = "5678"
_labels = itertools.count(1)


def softhsm_lib() -> str:
    """The SoftHSM2 PKCS#11 library; RuntimeError naming the package when absent."""
    for cand in LIB_CANDIDATES:
        if os.path.exists(cand):
            return cand
    raise RuntimeError("SoftHSM2 is not installed: apt-get install -y softhsm2")


@dataclass
class Token:
    """One initialised token: its label, user PIN and directory under the token dir."""

    label: str
    pin: str
    path: Path
    lib: str

    def options(self, **overrides: str) -> dict[str, str]:
        """``seal "pkcs11"`` options for this token (keys generated on first use)."""
        opts = {"lib": self.lib, "token_label": self.label, "pin": self.pin, "key_label": "vault-key",
                "hmac_key_label": "vault-hmac", "generate_key": "true"}
        opts.update(overrides)
        return opts

    def stanza(self, *, disabled: bool = False, **overrides: str) -> str:
        """The HCL ``seal "pkcs11"`` stanza for this token."""
        lines = [f'  {k} = "{v}"' for k, v in self.options(**overrides).items()]
        if disabled:
            lines.append('  disabled = "true"')
        return 'seal "pkcs11" {\n' + "\n".join(lines) + "\n}\n"

    def remove(self, parked: Path) -> None:
        """Simulate pulling the token out: move its files away."""
        shutil.move(str(self.path), str(parked))

    def reinsert(self, parked: Path) -> None:
        """Put the token back."""
        shutil.move(str(parked), str(self.path))


@dataclass
class SoftHSM:
    """A token directory with its softhsm2.conf."""

    root: Path
    lib: str = field(default_factory=softhsm_lib)

    @property
    def tokendir(self) -> Path:
        return self.root / "tokens"

    @property
    def conf(self) -> Path:
        return self.root / "softhsm2.conf"

    def write_conf(self) -> None:
        """Create the token directory and the config pointing at it."""
        self.tokendir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"directories.tokendir = {self.tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n")

    def new_token(self, label: str | None = None, pin: str = PIN) -> Token:
        """Initialise a fresh token; a library already loaded in this process is re-initialised
        so that it sees the new token (SoftHSM scans the directory only at C_Initialize)."""
        label = label or f"t{os.getpid()}-{next(_labels)}"
        before = set(self.tokendir.iterdir())
        env = dict(os.environ, SOFTHSM2_CONF=str(self.conf))
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", SO_PIN],
                       check=True, capture_output=True, env=env)
        (path,) = set(self.tokendir.iterdir()) - before
        refresh_library(self.lib)
        return Token(label, pin, path, self.lib)


def refresh_library(lib: str) -> None:
    """Re-run C_Initialize in this process if python-pkcs11 already loaded ``lib``."""
    import pkcs11

    loaded = getattr(pkcs11, "_loaded", {}).get(lib)
    if loaded is not None:
        loaded.reinitialize()


def token_session(token: Token, *, rw: bool = False) -> Any:
    """A python-pkcs11 session on ``token`` (login state is per process: reuse it)."""
    import pkcs11

    tok = pkcs11.lib(token.lib).get_token(token_label=token.label)
    try:
        return tok.open(user_pin=token.pin, rw=rw)
    except pkcs11.UserAlreadyLoggedIn:
        return tok.open(rw=rw)


def destroy_key(token: Token, label: str) -> None:
    """Delete a key from the token (an operator retiring an old HSM key)."""
    import pkcs11

    with token_session(token, rw=True) as session:
        session.get_key(object_class=pkcs11.ObjectClass.SECRET_KEY, label=label).destroy()


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHSM]:
    """A session-wide SoftHSM2 token directory; sets SOFTHSM2_CONF for this process."""
    if shutil.which("softhsm2-util") is None:
        raise RuntimeError("softhsm2-util not found: apt-get install -y softhsm2")
    hsm = SoftHSM(tmp_path_factory.mktemp("softhsm"))
    hsm.write_conf()
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
    refresh_library(hsm.lib)
    yield hsm
    if old is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = old


@pytest.fixture
def token(softhsm: SoftHSM) -> Token:
    """A fresh token for one test."""
    return softhsm.new_token()
