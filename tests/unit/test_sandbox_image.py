"""Unit tests of sandbox/library/sandbox_image.py: preflight and parameters in run(), and main()."""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import pytest
import sandbox_image
from ansible.module_utils.flipback_sandbox import ImageSpec, SandboxError
from fakes import DummyHost, run_module

PACKAGES = ["openssh-server", "systemd"]


@pytest.fixture
def as_root(monkeypatch):
    monkeypatch.setattr(sandbox_image.os, "geteuid", lambda: 0)
    monkeypatch.setattr(sandbox_image.shutil, "which", lambda tool: f"/usr/sbin/{tool}")


class FakeImage:
    """Records the spec and check mode the module asked for; does what `outcome` says."""

    instances: ClassVar[list[FakeImage]] = []
    outcome: ClassVar[dict | Exception] = {}

    def __init__(self, spec, host):
        self.spec = spec
        self.host = host
        self.check_modes = []
        FakeImage.instances.append(self)

    def ensure(self, check_mode):
        self.check_modes.append(check_mode)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return dict(self.outcome)


@pytest.fixture
def fake_image(monkeypatch):
    monkeypatch.setattr(sandbox_image, "Image", FakeImage)
    monkeypatch.setattr(sandbox_image, "Host", DummyHost)
    monkeypatch.setattr(FakeImage, "instances", [])
    monkeypatch.setattr(
        FakeImage,
        "outcome",
        {"changed": True, "path": "/i/0123456789ab", "key": "0123456789ab", "pruned": ["/i/old"]},
    )
    return FakeImage


def module(check_mode=False, **overrides):
    params = {
        "packages": PACKAGES,
        "suite": "bookworm",
        "variant": "minbase",
        "mirror": "",
        "images_dir": "/var/lib/flipback/images",
        "cache_dir": "/var/cache/flipback/debs",
        **overrides,
    }
    return SimpleNamespace(params=params, check_mode=check_mode)


def run_main(args, capsys):
    code, result, _out = run_module(sandbox_image, args, capsys)
    return code, result


# --------------------------------------------------------------------------- run


def test_run_needs_root(monkeypatch, fake_image):
    monkeypatch.setattr(sandbox_image.os, "geteuid", lambda: 1000)

    with pytest.raises(SandboxError) as err:
        sandbox_image.run(module(), DummyHost())

    assert "needs root" in err.value.msg
    assert "running as uid 1000" in err.value.msg
    assert err.value.retryable is False
    assert fake_image.instances == []


def test_run_needs_debootstrap(monkeypatch, fake_image):
    monkeypatch.setattr(sandbox_image.os, "geteuid", lambda: 0)
    monkeypatch.setattr(
        sandbox_image.shutil, "which", lambda tool: None if tool == "debootstrap" else "/bin/x"
    )

    with pytest.raises(SandboxError) as err:
        sandbox_image.run(module(), DummyHost())

    assert err.value.msg.startswith("debootstrap not found on the controller")
    assert fake_image.instances == []


@pytest.mark.parametrize(
    "packages",
    [pytest.param([], id="empty"), pytest.param(["python3", "Bad Name"], id="invalid-name")],
)
def test_run_validates_packages(as_root, fake_image, packages):
    with pytest.raises(SandboxError) as err:
        sandbox_image.run(module(packages=packages), DummyHost())
    assert err.value.details == {"field": "packages", "value": packages}
    assert fake_image.instances == []


@pytest.mark.parametrize("check_mode", [False, True], ids=["apply", "check"])
def test_run_builds_the_spec_from_params(as_root, fake_image, check_mode):
    host = DummyHost()

    result = sandbox_image.run(
        module(check_mode, suite="trixie", mirror="http://deb.example/debian"), host
    )

    (image,) = fake_image.instances
    assert image.spec == ImageSpec(
        suite="trixie",
        variant="minbase",
        packages=tuple(PACKAGES),
        mirror="http://deb.example/debian",
        images_dir="/var/lib/flipback/images",
        cache_dir="/var/cache/flipback/debs",
    )
    assert image.host is host
    assert image.check_modes == [check_mode]
    assert result["pruned"] == ["/i/old"]


# --------------------------------------------------------------------------- main


@pytest.mark.parametrize("check_mode", [False, True], ids=["apply", "check"])
def test_main_ensures_the_image(as_root, fake_image, capsys, check_mode):
    code, result = run_main({"packages": PACKAGES, "_ansible_check_mode": check_mode}, capsys)

    assert code == 0
    (image,) = fake_image.instances
    assert image.check_modes == [check_mode]
    assert isinstance(image.host, DummyHost)
    assert image.spec.images_dir == "/var/lib/flipback/images"
    assert (image.spec.suite, image.spec.variant, image.spec.mirror) == ("bookworm", "minbase", "")
    assert (result["changed"], result["path"], result["pruned"]) == (
        True,
        "/i/0123456789ab",
        ["/i/old"],
    )
    assert isinstance(result["elapsed"], float)


def test_main_reports_a_build_failure(as_root, fake_image, capsys):
    fake_image.outcome = SandboxError(
        "debootstrap of bookworm failed (exit 1); expected a complete base image.",
        retryable=True,
    )

    code, result = run_main({"packages": PACKAGES}, capsys)

    assert code == 1
    assert result["failed"] is True
    assert result["msg"].startswith("debootstrap of bookworm failed (exit 1)")
    assert result["retryable"] is True
    assert isinstance(result["elapsed"], float)


def test_main_reports_invalid_packages_with_the_field(as_root, fake_image, capsys):
    code, result = run_main({"packages": ["ok1", "NOT OK"]}, capsys)

    assert code == 1
    assert result["msg"].startswith("packages: got ['ok1', 'NOT OK']")
    assert (result["field"], result["value"]) == ("packages", ["ok1", "NOT OK"])
    assert result["retryable"] is False
    assert "elapsed" in result


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param({}, "missing required arguments: packages", id="no-packages"),
        pytest.param(
            {"packages": PACKAGES, "variant": "standard"},
            "value of variant must be one of",
            id="bad-variant",
        ),
    ],
)
def test_main_argument_spec(as_root, fake_image, capsys, args, message):
    code, result = run_main(args, capsys)
    assert code == 1
    assert message in result["msg"]
    assert fake_image.instances == []
