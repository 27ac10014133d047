"""Secrets are required: the worker and the HTTP service refuse to start on a default, empty or
short secret unless ``DEV_MODE=on``; secrets never show in a repr or in docs/CONFIG.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamscore.settings import DEV_SECRETS, ENV_NAMES, SECRET_MIN_CHARS, SECRETS, SecretsError, Settings

ROOT = Path(__file__).resolve().parent.parent
SECRET_ENVS = ("API_TOKEN", "PII_HMAC_SECRET", "STATE_HMAC_SECRET", "DEAD_LETTER_KEY")
GOOD = {"API_TOKEN": "t" * 40, "PII_HMAC_SECRET": "p" * 40, "STATE_HMAC_SECRET": "s" * 40, "DEAD_LETTER_KEY": "d" * 40}


def test_unset_secrets_are_refused_outside_dev_mode():
    s = Settings.from_env({})
    with pytest.raises(SecretsError) as err:
        s.require_secrets("the worker")
    for env in SECRET_ENVS:
        assert env in str(err.value)
    Settings.from_env({"DEV_MODE": "on"}).require_secrets("the worker")  # development: placeholders allowed


@pytest.mark.parametrize("env", SECRET_ENVS)
def test_each_placeholder_or_short_secret_is_refused(env):
    Settings.from_env(GOOD).require_secrets("x")
    for bad in (DEV_SECRETS[next(f for f, e in _fields().items() if e == env)], "x" * (SECRET_MIN_CHARS - 1)):
        with pytest.raises(SecretsError, match=env):
            Settings.from_env({**GOOD, env: bad}).require_secrets("x")
    assert Settings.from_env({**GOOD, env: ""}).secret_problems()  # empty: the placeholder, refused


def test_several_api_tokens_are_valid_and_each_is_checked():
    s = Settings.from_env({**GOOD, "API_TOKEN": "a" * 40 + ", " + "b" * 40})
    assert s.api_tokens == ("a" * 40, "b" * 40) and s.secret_problems() == []
    with pytest.raises(SecretsError, match="token 2 of 2"):
        Settings.from_env({**GOOD, "API_TOKEN": "a" * 40 + ",short"}).require_secrets("x")


def test_secrets_never_in_repr_or_config_doc():
    s = Settings.from_env(GOOD)
    text = repr(s) + str(s)
    for value in list(GOOD.values()) + list(DEV_SECRETS.values()):
        assert value not in text
    doc = (ROOT / "docs" / "CONFIG.md").read_text()
    for value in DEV_SECRETS.values():
        assert value not in doc
    for env in SECRET_ENVS:
        assert f"`{env}` | (secret: required" in doc


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_cli_refuses_to_start_without_secrets(command):
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENVS + ("DEV_MODE",)}
    env["PYTHONPATH"] = str(ROOT)
    # nothing listens there: a process that got past the check would hang or fail differently
    env.update(KAFKA_BOOTSTRAP="127.0.0.1:1", REDIS_URL="redis://127.0.0.1:1/0", PII_HMAC_SECRET="p" * 40)
    out = subprocess.run([sys.executable, "-m", "streamscore", command], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2, out.stderr
    assert "refuses to start" in out.stderr and "API_TOKEN" in out.stderr and "STATE_HMAC_SECRET" in out.stderr
    assert "PII_HMAC_SECRET" not in out.stderr  # set properly: not named
    assert "Traceback" not in out.stderr
    assert "p" * 40 not in out.stderr  # a secret's value is never printed


def _fields() -> dict[str, str]:
    return {name: ENV_NAMES[name] for name in SECRETS}
