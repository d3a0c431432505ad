"""Unit tests of sandbox/library/sandbox_fleet.py: preflight, parameters to FleetSpec, main()."""

from __future__ import annotations

import ipaddress
from typing import ClassVar

import pytest
import sandbox_fleet
from ansible.module_utils.flipback_sandbox import SandboxError
from fakes import DummyHost, run_module

TOOLS = ("systemd-nspawn", "ip", "ssh", "ssh-keygen")


@pytest.fixture
def as_root(monkeypatch):
    monkeypatch.setattr(sandbox_fleet.os, "geteuid", lambda: 0)
    monkeypatch.setattr(sandbox_fleet.shutil, "which", lambda tool: f"/usr/bin/{tool}")


@pytest.fixture
def image_dir(tmp_path):
    path = tmp_path / "images" / "0123456789ab"
    path.mkdir(parents=True)
    return str(path)


class FakeFleet:
    """Records how the module built and drove the fleet; does what `outcome` says."""

    instances: ClassVar[list[FakeFleet]] = []
    outcome: ClassVar[dict | Exception] = {}

    def __init__(self, spec, host, *, boot_timeout, stop_timeout):
        self.spec = spec
        self.host = host
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout
        self.calls = []
        self.requests = []
        FakeFleet.instances.append(self)

    def _act(self, state, check_mode):
        self.calls.append((state, check_mode))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return dict(self.outcome)

    def present(self, check_mode, *, rebuild, machines):
        self.requests.append({"rebuild": rebuild, "machines": machines})
        return self._act("present", check_mode)

    def restarted(self, check_mode, *, rebuild, machines):
        self.requests.append({"rebuild": rebuild, "machines": machines})
        return self._act("restarted", check_mode)

    def absent(self, check_mode):
        return self._act("absent", check_mode)


@pytest.fixture
def fake_fleet(monkeypatch):
    monkeypatch.setattr(sandbox_fleet, "Fleet", FakeFleet)
    monkeypatch.setattr(sandbox_fleet, "Host", DummyHost)
    monkeypatch.setattr(FakeFleet, "instances", [])
    monkeypatch.setattr(
        FakeFleet,
        "outcome",
        {
            "changed": True,
            "machines": [{"name": "sandbox-1", "address": "10.213.1.11"}],
            "created": ["sandbox-1"],
        },
    )
    return FakeFleet


def params(**overrides):
    return {
        "name": "sandbox",
        "state": "present",
        "size": 2,
        "subnet": "10.213.1.0/24",
        "image": "/nonexistent",
        "state_dir": "/var/lib/flipback/sandbox",
        "boot_timeout": 120,
        "stop_timeout": 15,
        **overrides,
    }


def run_main(args, capsys):
    code, result, _out = run_module(sandbox_fleet, args, capsys)
    return code, result


# --------------------------------------------------------------------------- preflight


def test_preflight_passes_as_root_with_all_tools(monkeypatch):
    asked: list[str] = []

    def which(tool: str) -> str:
        asked.append(tool)
        return f"/usr/bin/{tool}"

    monkeypatch.setattr(sandbox_fleet.os, "geteuid", lambda: 0)
    monkeypatch.setattr(sandbox_fleet.shutil, "which", which)

    # Passes: no error, and every tool was looked for (none left unchecked).
    assert sandbox_fleet.preflight() is None
    assert asked == list(TOOLS)


def test_preflight_needs_root(monkeypatch):
    monkeypatch.setattr(sandbox_fleet.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(sandbox_fleet.shutil, "which", lambda tool: f"/usr/bin/{tool}")

    with pytest.raises(SandboxError) as err:
        sandbox_fleet.preflight()

    assert "needs root" in err.value.msg
    assert "running as uid 1000" in err.value.msg
    assert err.value.retryable is False


@pytest.mark.parametrize(
    "missing",
    [
        pytest.param(["ip"], id="iproute2"),
        pytest.param(["systemd-nspawn", "ssh-keygen"], id="two"),
        pytest.param(list(TOOLS), id="all"),
    ],
)
def test_preflight_names_missing_tools(monkeypatch, missing):
    monkeypatch.setattr(sandbox_fleet.os, "geteuid", lambda: 0)
    monkeypatch.setattr(
        sandbox_fleet.shutil, "which", lambda tool: None if tool in missing else f"/bin/{tool}"
    )

    with pytest.raises(SandboxError) as err:
        sandbox_fleet.preflight()

    assert err.value.msg.startswith(f"missing on the controller: {', '.join(missing)}; ")
    assert err.value.retryable is False


# --------------------------------------------------------------------------- build_fleet


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        pytest.param({"subnet": None}, "subnet", "subnet: missing", id="no-subnet"),
        pytest.param({"subnet": ""}, "subnet", "subnet: missing", id="empty-subnet"),
        pytest.param({"image": None}, "image", "image: missing", id="no-image"),
        pytest.param(
            {"image": "/nonexistent/image"},
            "image",
            "image: got '/nonexistent/image', expected an existing base image directory",
            id="image-not-a-directory",
        ),
    ],
)
def test_build_fleet_rejects_present_without_inputs(fake_fleet, overrides, field, message):
    with pytest.raises(SandboxError) as err:
        sandbox_fleet.build_fleet(params(**overrides))
    assert err.value.msg.startswith(message)
    assert err.value.details["field"] == field
    assert fake_fleet.instances == []


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"name": "Sandbox"}, "name", id="name"),
        pytest.param({"size": 0}, "size", id="size"),
        pytest.param({"subnet": "8.8.8.0/24"}, "subnet", id="subnet"),
    ],
)
def test_build_fleet_validates_inputs(fake_fleet, image_dir, overrides, field):
    with pytest.raises(SandboxError) as err:
        sandbox_fleet.build_fleet(params(image=image_dir, **overrides))
    assert err.value.details["field"] == field


def test_build_fleet_present(fake_fleet, image_dir):
    fleet = sandbox_fleet.build_fleet(
        params(image=image_dir, size=3, state_dir="/srv/sb", boot_timeout=30, stop_timeout=4)
    )

    assert fleet.spec.name == "sandbox"
    assert fleet.spec.size == 3
    assert fleet.spec.subnet == ipaddress.IPv4Network("10.213.1.0/24")
    assert fleet.spec.image == image_dir
    assert fleet.spec.dir == "/srv/sb/sandbox"
    assert (fleet.boot_timeout, fleet.stop_timeout) == (30, 4)
    assert isinstance(fleet.host, DummyHost)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"subnet": None, "image": None}, id="no-subnet-no-image"),
        pytest.param({"subnet": None, "image": None, "size": 99}, id="size-ignored"),
        pytest.param({"image": "/gone"}, id="image-need-not-exist"),
    ],
)
def test_build_fleet_absent_needs_only_the_name(fake_fleet, overrides):
    fleet = sandbox_fleet.build_fleet(params(state="absent", **overrides))
    assert fleet.spec.name == "sandbox"
    assert fleet.spec.size == 1
    assert fleet.spec.dir == "/var/lib/flipback/sandbox/sandbox"
    assert fleet.spec.image == (overrides["image"] or "")


def test_build_fleet_absent_still_validates_the_name(fake_fleet):
    with pytest.raises(SandboxError) as err:
        sandbox_fleet.build_fleet(params(state="absent", name="../etc", subnet=None))
    assert err.value.details == {"field": "name", "value": "../etc"}


# --------------------------------------------------------------------------- main


@pytest.mark.parametrize(
    ("check_mode", "state"),
    [
        pytest.param(False, "present", id="present"),
        pytest.param(True, "present", id="present-check"),
        pytest.param(False, "absent", id="absent"),
        pytest.param(True, "absent", id="absent-check"),
    ],
)
def test_main_drives_the_fleet(as_root, fake_fleet, image_dir, capsys, check_mode, state):
    args = {"name": "sandbox", "state": state, "_ansible_check_mode": check_mode}
    if state == "present":
        args.update(subnet="10.213.1.0/24", image=image_dir)

    code, result = run_main(args, capsys)

    assert code == 0
    (fleet,) = fake_fleet.instances
    assert fleet.calls == [(state, check_mode)]
    assert result["changed"] is True
    assert result["created"] == ["sandbox-1"]
    assert isinstance(result["elapsed"], float)
    assert result["elapsed"] >= 0
    expected_machines = [{"name": "sandbox-1", "address": "10.213.1.11"}]
    assert result["machines"] == (expected_machines if state == "present" else [])


def test_main_passes_defaults(as_root, fake_fleet, image_dir, capsys):
    run_main({"name": "sandbox", "subnet": "10.213.1.0/24", "image": image_dir}, capsys)
    (fleet,) = fake_fleet.instances
    assert fleet.spec.size == 2
    assert fleet.spec.state_dir == "/var/lib/flipback/sandbox"
    assert (fleet.boot_timeout, fleet.stop_timeout) == (120, 15)


def test_main_reports_a_fleet_failure(as_root, fake_fleet, image_dir, capsys):
    fake_fleet.outcome = SandboxError(
        "machines sandbox-1 did not boot within 120s: sshd never answered",
        retryable=True,
        console={"sandbox-1": "[FAILED] ssh.service"},
    )

    code, result = run_main(
        {"name": "sandbox", "subnet": "10.213.1.0/24", "image": image_dir}, capsys
    )

    assert code == 1
    assert result["failed"] is True
    assert result["msg"] == "machines sandbox-1 did not boot within 120s: sshd never answered"
    assert result["retryable"] is True
    assert isinstance(result["elapsed"], float)
    assert result["console"] == {"sandbox-1": "[FAILED] ssh.service"}


def test_main_reports_preflight_failure_before_building(monkeypatch, fake_fleet, capsys):
    monkeypatch.setattr(sandbox_fleet.os, "geteuid", lambda: 1000)

    code, result = run_main({"name": "sandbox", "state": "absent"}, capsys)

    assert code == 1
    assert "running as uid 1000" in result["msg"]
    assert result["retryable"] is False
    assert isinstance(result["elapsed"], float)
    assert fake_fleet.instances == []


def test_main_reports_an_invalid_input_with_its_field(as_root, fake_fleet, capsys):
    code, result = run_main(
        {"name": "sandbox", "subnet": "10.213.1.0/24", "image": "/nonexistent/image"}, capsys
    )

    assert code == 1
    assert result["msg"].startswith("image: got '/nonexistent/image'")
    assert (result["field"], result["value"]) == ("image", "/nonexistent/image")
    assert result["retryable"] is False
    assert "elapsed" in result
    assert fake_fleet.instances == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            {"name": "sandbox", "image": "/i"},
            "state is present but all of the following are missing: subnet",
            id="present-without-subnet",
        ),
        pytest.param({"state": "absent"}, "missing required arguments: name", id="no-name"),
        pytest.param(
            {"name": "sandbox", "state": "gone"}, "value of state must be one of", id="bad-state"
        ),
    ],
)
def test_main_argument_spec(as_root, fake_fleet, capsys, args, message):
    code, result = run_main(args, capsys)
    assert code == 1
    assert message in result["msg"]
    assert fake_fleet.instances == []


# --------------------------------------------------------------------------- restarted, rebuild


@pytest.mark.parametrize(
    ("state", "extra", "request_"),
    [
        pytest.param("present", {}, {"rebuild": False, "machines": None}, id="present-defaults"),
        pytest.param(
            "present",
            {"rebuild": True, "machines": ["sandbox-2"]},
            {"rebuild": True, "machines": ["sandbox-2"]},
            id="present-rebuild-one",
        ),
        pytest.param("restarted", {}, {"rebuild": False, "machines": None}, id="restarted-all"),
        pytest.param(
            "restarted",
            {"machines": "sandbox-1,sandbox-2"},
            {"rebuild": False, "machines": ["sandbox-1", "sandbox-2"]},
            id="restarted-comma-separated",
        ),
        pytest.param(
            "restarted",
            {"rebuild": "yes"},
            {"rebuild": True, "machines": None},
            id="restarted-rebuild",
        ),
    ],
)
@pytest.mark.parametrize("check_mode", [False, True], ids=["apply", "check"])
def test_main_passes_rebuild_and_machines(
    as_root, fake_fleet, image_dir, capsys, state, extra, request_, check_mode
):
    args = {
        "name": "sandbox",
        "state": state,
        "subnet": "10.213.1.0/24",
        "image": image_dir,
        "_ansible_check_mode": check_mode,
        **extra,
    }

    code, result = run_main(args, capsys)

    assert code == 0, result
    (fleet,) = fake_fleet.instances
    assert fleet.calls == [(state, check_mode)]
    assert fleet.requests == [request_]
    assert result["machines"] == [{"name": "sandbox-1", "address": "10.213.1.11"}]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        pytest.param({"rebuild": True}, "rebuild", id="rebuild"),
        pytest.param({"machines": ["sandbox-1"]}, "machines", id="machines"),
    ],
)
def test_main_refuses_rebuild_and_machines_with_absent(as_root, fake_fleet, capsys, extra, field):
    code, result = run_main({"name": "sandbox", "state": "absent", **extra}, capsys)

    assert code == 1
    assert result["msg"].startswith(f"{field}: got ")
    assert "with state=absent, which removes every machine" in result["msg"]
    assert result["msg"].endswith("Nothing was changed")
    assert result["field"] == field
    assert result["retryable"] is False
    assert fake_fleet.instances == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"subnet": None}, "subnet: missing; expected a value with state=restarted"),
        pytest.param({"image": None}, "image: missing; expected a value with state=restarted"),
    ],
    ids=["subnet", "image"],
)
def test_build_fleet_restarted_needs_subnet_and_image(fake_fleet, image_dir, overrides, message):
    with pytest.raises(SandboxError) as err:
        sandbox_fleet.build_fleet(
            params(
                **{"state": "restarted", "image": image_dir, "rebuild": False, "machines": None}
                | overrides
            )
        )
    assert err.value.msg == message
    assert fake_fleet.instances == []


def test_main_restarted_argument_spec_needs_subnet(as_root, fake_fleet, capsys):
    code, result = run_main({"name": "sandbox", "state": "restarted", "image": "/i"}, capsys)
    assert code == 1
    assert "state is restarted but all of the following are missing: subnet" in result["msg"]
    assert fake_fleet.instances == []
