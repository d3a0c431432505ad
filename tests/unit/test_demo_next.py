"""Unit tests of sandbox/demo_next.py: the commands `make demo` prints at its end name a
release id that every host has and that a rollback by id accepts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "sandbox" / "demo_next.py"
_SPEC = importlib.util.spec_from_file_location("demo_next", _PATH)
assert _SPEC and _SPEC.loader
demo_next = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(demo_next)

V1 = "20261129T143123-6046ed9aa1"
V2 = "20261102T100000-5ecd874081"
OLD = "20261001T100000-0000000000"
BAD = "20261201T100000-ffffffffff"


def host(
    current: str | None,
    *releases: tuple[str, str],
    service: str = "hello",
    previous_good: str | None = None,
) -> dict:
    return {
        "services": [
            {
                "name": service,
                "current": current,
                "previous_good": previous_good,
                "releases": [{"id": rid, "status": status} for rid, status in releases],
            }
        ]
    }


def status(**hosts: dict) -> dict:
    return {"kind": "flipback status", "hosts": hosts}


# As `make demo` leaves it: v1 live again, v2 rolled back from, on both machines.
DEMO = status(
    **{
        "sandbox-1": host(V1, (V2, "rolled_back"), (V1, "active")),
        "sandbox-2": host(V1, (V2, "rolled_back"), (V1, "active")),
    }
)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(DEMO, [(V2, "rolled_back")], id="demo"),
        pytest.param(
            status(a=host(V1, (OLD, "good"), (V2, "staged"), (BAD, "failed"), (V1, "active"))),
            [(V2, "staged"), (OLD, "good")],
            id="newest-first-no-failed",
        ),
        pytest.param(
            status(a=host(V1, (V2, "good"), (OLD, "good")), b=host(V1, (OLD, "good"))),
            [(OLD, "good")],
            id="only-what-every-host-has",
        ),
        pytest.param(
            status(a=host(V1, (V2, "incomplete"), (V1, "active"))), [], id="incomplete-no"
        ),
        pytest.param(status(), [], id="no-hosts"),
    ],
)
def test_rollback_choices(doc, expected):
    assert demo_next.rollback_choices(doc, "hello") == expected


def test_next_steps_of_the_demo_name_the_release_and_every_command():
    text = demo_next.next_steps(DEMO, "hello")
    playbook = ".venv/bin/ansible-playbook playbooks"
    for command in (
        f"{playbook}/status.yml",
        f"{playbook}/rollback.yml -e service=hello -e release={V2}",
        # A rollback by id leaves V1 rolled back, not good: the way back is by id too.
        f"{playbook}/rollback.yml -e service=hello -e release={V1}\n      and back",
        f"{playbook}/rollback.yml -e service=hello\n      refused here",
        f"{playbook}/history.yml -e service=hello",
        f"{playbook}/logs.yml -e service=hello -e since=15m",
        f"{playbook}/verify.yml",
    ):
        assert f"  {command}" in text, command
    assert "make sandbox-down" in text


def test_next_steps_without_a_release_to_name_offer_the_plain_rollback():
    text = demo_next.next_steps(status(a=host(V1, (V1, "active"))), "hello")
    assert "-e release=" not in text
    assert "rollback.yml -e service=hello\n      refused here" in text


def test_next_steps_name_the_previous_good_release_when_every_host_has_it():
    doc = status(
        a=host(V1, (OLD, "good"), previous_good=OLD), b=host(V1, (OLD, "good"), previous_good=OLD)
    )
    text = demo_next.next_steps(doc, "hello")
    assert (
        f"rollback.yml -e service=hello\n      hello back to its previous good release, {OLD}"
        in (text)
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "Expecting"),
        ('{"hosts": []}', "no 'hosts' object"),
        (json.dumps(status(a=host(V1, service="greeter"))), "host a reports no service 'hello'"),
    ],
    ids=["not-json", "not-status", "no-such-service"],
)
def test_main_refuses_what_is_not_a_status_file(tmp_path, capsys, content, message):
    path = tmp_path / "status.json"
    path.write_text(content)
    with pytest.raises(SystemExit) as exit_:
        demo_next.main([str(path)])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_main_prints_the_steps(tmp_path, capsys):
    path = tmp_path / "status.json"
    path.write_text(json.dumps(DEMO))
    assert demo_next.main([str(path)]) == 0
    assert f"-e release={V2}" in capsys.readouterr().out
