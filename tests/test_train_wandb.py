"""wandb never touches the network without a key: 'auto' is offline unless a key is configured (the
WANDB_API_KEY variable or a netrc entry for the W&B host, what `wandb login` writes), even where
WANDB_MODE says online; 'online' without a key is refused before wandb starts. The mode wandb is started
with is recorded by a stand-in `wandb.init`, and a real offline start is made with name lookups and
outside connections of this process failing."""

from __future__ import annotations

import socket
import sys
import types

import pytest

from chinchax.errors import UserError
from chinchax.train.metrics import start_wandb


@pytest.fixture
def no_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc
    (tmp_path / "home").mkdir()
    return tmp_path


@pytest.fixture
def started(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(init=lambda **kw: calls.append(kw) or "run")
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return calls


@pytest.mark.parametrize("env_mode", [None, "online", "run"])
def test_auto_without_a_key_is_offline(no_key, started, monkeypatch, env_mode):
    if env_mode:
        monkeypatch.setenv("WANDB_MODE", env_mode)
    assert start_wandb("proj", "auto", no_key, "r", {}) == "run"
    assert started[-1]["mode"] == "offline"


def test_auto_with_a_key_goes_online(no_key, started, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    start_wandb("proj", "auto", no_key, "r", {})
    assert started[-1]["mode"] == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")  # the user's WANDB_MODE still wins
    start_wandb("proj", "auto", no_key, "r", {})
    assert started[-1]["mode"] == "offline"


def test_a_netrc_key_counts_as_configured(no_key, started):
    netrc = no_key / "home" / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    start_wandb("proj", "auto", no_key, "r", {})
    assert started[-1]["mode"] == "online"


def test_online_without_a_key_is_refused_before_wandb_starts(no_key, started):
    with pytest.raises(UserError, match="needs a W&B API key"):
        start_wandb("proj", "online", no_key, "r", {})
    assert started == []
    assert start_wandb(None, "auto", no_key, "r", {}) is None and start_wandb("p", "disabled", no_key, "r", {}) is None


def test_a_real_offline_start_with_the_network_unreachable(no_key, monkeypatch):
    lookups = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect
    local = {"localhost", "127.0.0.1", "::1", None}

    def getaddrinfo(host, *args, **kwargs):
        if host not in local:
            lookups.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "network unreachable (test)")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in local:
            lookups.append(address[0])
            raise OSError("network unreachable (test)")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    run = start_wandb("chinchax-test", "auto", no_key, "offline-check", {"a": 1})
    try:
        assert type(run).__module__.startswith("wandb") and run.settings.mode == "offline"
        run.log({"loss": 1.0})
    finally:
        run.finish()
    assert lookups == []
    assert list((no_key / "wandb").glob("offline-run-*"))
