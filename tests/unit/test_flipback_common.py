"""Unit tests of module_utils/flipback_common.py: respond() with a stand-in module,
run_command()'s environment, and keeping credentials out of git URLs and messages."""

from __future__ import annotations

import sys

import pytest
from ansible.module_utils.flipback_common import (
    FlipbackError,
    redact_url,
    respond,
    run_command,
    scrub,
    split_credentials,
)


class Ended(Exception):
    """What the stand-in raises where an AnsibleModule would exit."""

    def __init__(self, how: str, answer: dict) -> None:
        super().__init__(how)
        self.how = how
        self.answer = answer


class FakeModule:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, warning: str) -> None:
        self.warnings.append(warning)

    def exit_json(self, **kwargs: object) -> None:
        raise Ended("exit", kwargs)

    def fail_json(self, msg: str, **kwargs: object) -> None:
        raise Ended("fail", {"msg": msg, **kwargs})


def answer(work) -> tuple[Ended, FakeModule]:
    module = FakeModule()
    with pytest.raises(Ended) as ended:
        respond(module, work)
    return ended.value, module


class Refused(FlipbackError):
    pass


def refuse(**details: object):
    def work() -> dict:
        raise Refused("no", retryable=True, **details)

    return work


@pytest.mark.parametrize(
    ("work", "how", "expected", "warnings"),
    [
        pytest.param(lambda: {"changed": True}, "exit", {"changed": True}, [], id="result"),
        pytest.param(
            lambda: {"changed": False, "warnings": ["w1", "w2"]},
            "exit",
            {"changed": False},
            ["w1", "w2"],
            id="warnings-become-module-warnings",
        ),
        pytest.param(
            refuse(observed="x"),
            "fail",
            {"msg": "no", "retryable": True, "observed": "x"},
            [],
            id="flipback-error",
        ),
    ],
)
def test_respond(work, how, expected, warnings):
    ended, module = answer(work)
    assert ended.how == how
    elapsed = ended.answer.pop("elapsed")
    assert isinstance(elapsed, float) and 0 <= elapsed < 5
    assert ended.answer == expected
    assert module.warnings == warnings


@pytest.mark.parametrize(
    "work",
    [
        pytest.param(lambda: {"elapsed": 7.5}, id="result"),
        pytest.param(refuse(elapsed=7.5), id="error"),
    ],
)
def test_respond_keeps_an_elapsed_the_work_measured(work):
    ended, _ = answer(work)
    assert ended.answer["elapsed"] == 7.5


def test_respond_lets_other_errors_through():
    def work() -> dict:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        respond(FakeModule(), work)


# ------------------------------------------------------------------------ run_command


def test_run_command_adds_env_to_this_processs_environment(monkeypatch):
    monkeypatch.setenv("FLIPBACK_TEST_KEPT", "kept")
    show = (
        "import os; print(os.environ.get('FLIPBACK_TEST_ADDED'), os.environ['FLIPBACK_TEST_KEPT'])"
    )
    with_env = run_command([sys.executable, "-c", show], {"FLIPBACK_TEST_ADDED": "added"})
    without = run_command([sys.executable, "-c", show])
    assert (with_env.returncode, with_env.stdout) == (0, "added kept\n")
    assert (without.returncode, without.stdout) == (0, "None kept\n")


# ------------------------------------------------------------- credentials in URLs


@pytest.mark.parametrize(
    ("url", "clean", "username", "password"),
    [
        pytest.param(
            "https://user:token@git.example.com/team/app.git",
            "https://git.example.com/team/app.git",
            "user",
            "token",
            id="https-user-token",
        ),
        pytest.param("http://token@host/x", "http://host/x", "token", None, id="http-token-only"),
        pytest.param(
            "https://:tok@host/x", "https://host/x", None, "tok", id="https-password-only"
        ),
        pytest.param("https://@host/x", "https://host/x", None, None, id="https-empty-userinfo"),
        pytest.param(
            "https://git.example.com/team/app.git",
            "https://git.example.com/team/app.git",
            None,
            None,
            id="https-without-credentials",
        ),
        pytest.param(
            "HTTPS://u:t@Git.Example.com/x", "HTTPS://Git.Example.com/x", "u", "t", id="upper-case"
        ),
        pytest.param(
            "https://oauth2:p%40ss%2Fw%3Ard@host/x.git",
            "https://host/x.git",
            "oauth2",
            "p@ss/w:rd",
            id="percent-encoded-token",
        ),
        pytest.param(
            "https://u:p@ss@host/x", "https://host/x", "u", "p@ss", id="unencoded-at-in-password"
        ),
        pytest.param("https://u:t@host:8443/x.git", "https://host:8443/x.git", "u", "t", id="port"),
        pytest.param(
            "https://u:t@[2001:db8::1]/x.git", "https://[2001:db8::1]/x.git", "u", "t", id="ipv6"
        ),
        pytest.param(
            "http://tok@[::1]:8080/x.git", "http://[::1]:8080/x.git", "tok", None, id="ipv6-port"
        ),
        pytest.param("git://u@host/x", "git://host/x", "u", None, id="other-scheme-user-dropped"),
        pytest.param("file://u:pw@/srv/git/x", "file:///srv/git/x", "u", "pw", id="file-url"),
        pytest.param(
            "ssh://user:pw@host/x.git", "ssh://user@host/x.git", None, "pw", id="ssh-password"
        ),
        pytest.param(
            "ssh://git:pw@host:2222/x", "ssh://git@host:2222/x", None, "pw", id="ssh-port"
        ),
        pytest.param("ssh://git@host/x", "ssh://git@host/x", None, None, id="ssh-user-kept"),
        pytest.param("ssh://:pw@host/x", "ssh://host/x", None, "pw", id="ssh-password-only"),
        pytest.param(
            "git+ssh://git:pw@host/x", "git+ssh://git@host/x", None, "pw", id="git-plus-ssh"
        ),
        pytest.param("git@host:team/x.git", "git@host:team/x.git", None, None, id="scp-like"),
        pytest.param(
            "user:pw@host:x.git", "user:pw@host:x.git", None, None, id="scp-like-unchanged"
        ),
        pytest.param("/srv/git/x.git", "/srv/git/x.git", None, None, id="local-path"),
        pytest.param("../a@b/x", "../a@b/x", None, None, id="relative-path-with-at"),
        pytest.param("https://host/@scope/x", "https://host/@scope/x", None, None, id="at-in-path"),
        pytest.param("https://host/x?u=a@b", "https://host/x?u=a@b", None, None, id="at-in-query"),
    ],
)
def test_split_credentials_and_redact_url(url, clean, username, password):
    assert split_credentials(url) == (clean, username, password)
    assert redact_url(url) == clean
    assert redact_url(clean) == clean  # redacting twice changes nothing


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        pytest.param(
            "fatal: token abc123 rejected, abc123 again",
            ["abc123"],
            "fatal: token *** rejected, *** again",
            id="every-occurrence",
        ),
        pytest.param(
            "https://u:p%40ss%2Fw@host", ["u", "p@ss/w"], "https://***:***@host", id="encoded-form"
        ),
        pytest.param("https://p%40ss%2fw@h", ["p@ss/w"], "https://***@h", id="lower-case-hex"),
        pytest.param("user p!ss%40x", ["p!ss@x"], "user ***", id="encoded-keeping-sub-delims"),
        pytest.param("said p@ss", ["p%40ss"], "said ***", id="decoded-form"),
        pytest.param("abcd then ab", ["ab", "abcd"], "*** then ***", id="longest-first"),
        pytest.param("a.b*c axbbc", ["a.b*c"], "*** axbbc", id="no-regex"),
        pytest.param("nothing to hide", ["", None], "nothing to hide", id="empty-secrets"),
        pytest.param("nothing to hide", [], "nothing to hide", id="no-secrets"),
        pytest.param("", ["tok"], "", id="empty-text"),
    ],
)
def test_scrub(text, secrets, expected):
    assert scrub(text, secrets) == expected
