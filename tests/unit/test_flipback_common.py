"""Unit tests of respond() in module_utils/flipback_common.py, with a stand-in module."""

from __future__ import annotations

import pytest
from ansible.module_utils.flipback_common import FlipbackError, respond


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
