"""Unit tests of library/release_stage.py: parameters to StageSpec, main()'s results.

main() stages a real artifact (written by flipback_build.write_artifact) into a root
under tmp_path, configured as release_config works it out for that root
(test_flipback_runtime.a_release); only the commands (venv, pip, compileall, systemctl)
go through a fake runner, and the release's unit goes to a tmp_path unit directory.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import release_stage
import yaml
from ansible.module_utils.flipback_build import write_artifact
from ansible.module_utils.flipback_release import ReleaseError, read_manifest
from ansible.module_utils.flipback_stage import Stager, StageSpec, sha256_file
from ansible.module_utils.testing import patch_module_args
from test_flipback_runtime import Release, a_release

SERVICE = "shop"
BUILD = "20261129T141500-3f2a9c1d0e"
SECRET = "s3cr3t-value-never-shown"
ENV = {"SHOP_TOKEN": SECRET}


def configured(root: Path | str) -> Release:
    """The release BUILD becomes with the shop's configuration on a host rooted at `root`."""
    return a_release(SERVICE, str(root), env=ENV, build_id=BUILD, user="nobody")


class FakeRunner:
    """Fails the command whose third word (or last, for `systemctl daemon-reload`) is
    `fail`."""

    def __init__(self, fail: str = "") -> None:
        self.calls: list[list[str]] = []
        self.specs: list[StageSpec] = []
        self.fail = fail

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        step = argv[2] if len(argv) > 2 else argv[-1]
        if step == "venv":
            Path(argv[3], "bin").mkdir(parents=True)
            Path(argv[3], "bin", "python").write_text("#!/bin/sh\n")
        rc = 1 if step == self.fail else 0
        return subprocess.CompletedProcess(argv, rc, "", f"{step} rc {rc}")


@pytest.fixture
def runner(monkeypatch, tmp_path) -> FakeRunner:
    """The module's Stager, with the fake runner and a tmp_path unit directory; records
    the specs it was given."""
    fake = FakeRunner()

    def stager(spec: StageSpec) -> Stager:
        fake.specs.append(spec)
        return Stager(dataclasses.replace(spec, unit_dir=str(tmp_path / "systemd")), run=fake)

    monkeypatch.setattr(release_stage, "Stager", stager)
    if os.geteuid() != 0:
        for name in ("lchown", "chown", "fchown"):
            monkeypatch.setattr(os, name, lambda *args: None)
    return fake


@pytest.fixture
def rid(tmp_path) -> str:
    return configured(tmp_path / "srv" / SERVICE).id


@pytest.fixture
def artifact(tmp_path) -> Path:
    src = io.BytesIO()
    with tarfile.open(fileobj=src, mode="w") as tar:
        info = tarfile.TarInfo("./app.py")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"app=1"))
    wheel = tmp_path / "uvicorn-0.54.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    path = tmp_path / "incoming" / f"{BUILD}.tar"
    path.parent.mkdir()
    meta = {"service": SERVICE, "id": BUILD, "dependencies": ["uvicorn==0.54.0"]}
    write_artifact(str(path), src.getvalue(), [str(wheel)], 1_795_953_600, meta)
    return path


def args_for(tmp_path: Path, artifact: Path, /, **changes) -> dict:
    conf = configured(tmp_path / "srv" / SERVICE)
    return {
        "service": SERVICE,
        "root": str(tmp_path / "srv" / SERVICE),
        "release": conf.id,
        "artifact": str(artifact),
        "checksum": sha256_file(str(artifact)),
        "socket_dir": str(tmp_path / "run"),
        "manifest": {"git_sha": "a" * 40, "ref": "main"},
        "by": "alice",
        "build_id": conf.build_id,
        "config": conf.config,
        "env_file": conf.env_text,
        **changes,
    }


def run_main(args, capsys, check_mode=False):
    args = {"_ansible_check_mode": check_mode, **args}
    with patch_module_args(args), pytest.raises(SystemExit) as exit_info:
        release_stage.main()
    out = capsys.readouterr().out
    # The env file is never echoed, whatever happened.
    assert SECRET not in out
    return exit_info.value.code, json.loads(out)


def test_stage(tmp_path, rid, artifact, runner, capsys):
    code, result = run_main(args_for(tmp_path, artifact), capsys)

    path = tmp_path / "srv" / SERVICE / "releases" / rid
    assert code == 0
    assert result["changed"] is True
    assert (result["release"], result["path"], result["replaces"]) == (rid, str(path), None)
    assert isinstance(result["elapsed"], float)
    assert (path / "app.py").read_text() == "app=1"
    assert os.readlink(path / "sock") == str(tmp_path / "run" / rid / "app.sock")
    manifest = read_manifest(str(tmp_path / "srv" / SERVICE), rid)
    assert (manifest["status"], manifest["deployed_by"], manifest["git_sha"]) == (
        "staged",
        "alice",
        "a" * 40,
    )
    assert not artifact.exists()
    assert [argv[2] for argv in runner.calls[:3]] == ["venv", "pip", "compileall"]
    assert runner.calls[3:] == [["systemctl", "daemon-reload"]]
    unit = tmp_path / "systemd" / f"{SERVICE}@{rid}.service"
    assert f"EnvironmentFile={path.parent}/%i/.flipback/env" in unit.read_text()
    assert (path / ".flipback" / "env").read_text() == configured(path.parent.parent).env_text
    assert (manifest["build"], manifest["config"]) == (BUILD, configured(path.parent.parent).config)
    assert runner.calls[0][0] == "/usr/bin/python3"


def test_stage_again_is_unchanged(tmp_path, artifact, runner, capsys):
    args = args_for(tmp_path, artifact)
    run_main(args, capsys)
    runner.calls.clear()

    code, result = run_main(args, capsys)

    assert code == 0
    assert result["changed"] is False
    assert "replaces" not in result
    assert isinstance(result["elapsed"], float)
    assert runner.calls == []


def test_check_mode_writes_nothing(tmp_path, artifact, runner, capsys):
    code, result = run_main(args_for(tmp_path, artifact), capsys, check_mode=True)

    assert code == 0
    assert result["changed"] is True
    assert not (tmp_path / "srv").exists()
    assert artifact.exists()
    assert runner.calls == []


def test_defaults(artifact, runner, capsys):
    conf = configured(f"/srv/{SERVICE}")
    args = {
        "service": SERVICE,
        "release": conf.id,
        "artifact": str(artifact),
        "checksum": sha256_file(str(artifact)),
        "build_id": conf.build_id,
        "config": conf.config,
        "env_file": conf.env_text,
    }

    # Check mode: the default root /srv/shop is only looked at, never written.
    code, result = run_main(args, capsys, check_mode=True)

    assert code == 0
    assert result["path"] == f"/srv/{SERVICE}/releases/{conf.id}"
    (spec,) = runner.specs
    assert (spec.root, spec.socket_dir, spec.python, spec.manifest, spec.by) == (
        f"/srv/{SERVICE}",
        f"/run/flipback-{SERVICE}",
        "/usr/bin/python3",
        {},
        "unknown",
    )
    assert (spec.build_id, spec.config, spec.env_text) == (BUILD, conf.config, conf.env_text)
    assert spec.unit_dir == "/etc/systemd/system"


@pytest.mark.parametrize(
    "drop",
    [
        pytest.param("build_id", id="build-id"),
        pytest.param("config", id="config"),
        pytest.param("env_file", id="env-file"),
    ],
)
def test_required_arguments(tmp_path, artifact, runner, capsys, drop):
    args = args_for(tmp_path, artifact)
    del args[drop]

    code, result = run_main(args, capsys)

    assert code == 1
    assert drop in result["msg"]
    assert runner.specs == []


# A configuration its release id does not stand for: checked before anything is written.
TAMPERED = 'SHOP_TOKEN="tampered"\n'
OTHER_CONFIG = a_release(SERVICE, "/srv/shop", env=ENV, build_id=BUILD, workers=3).config
INVALID = "invalid configuration (1 problem), nothing was changed on any host"


@pytest.mark.parametrize(
    ("changes", "fail", "message", "retryable", "details"),
    [
        pytest.param(
            {"checksum": "0" * 64},
            "",
            "artifact: checksum ",
            True,
            {"field": "checksum"},
            id="checksum",
        ),
        pytest.param(
            {"artifact": "/nonexistent/x.tar"},
            "",
            "artifact: /nonexistent/x.tar does not exist on the host",
            True,
            {"field": "artifact"},
            id="artifact-missing",
        ),
        pytest.param(
            {"release": "../../etc"},
            "",
            "release: got '../../etc', expected an id like",
            False,
            {"field": "release", "value": "../../etc"},
            id="release",
        ),
        pytest.param(
            {"service": "Shop"},
            "",
            "service: got 'Shop', expected",
            False,
            {"field": "service", "value": "Shop"},
            id="service",
        ),
        pytest.param(
            {},
            "venv",
            "could not create the virtualenv for {rid} (exit 1): venv rc 1",
            False,
            {},
            id="venv",
        ),
        pytest.param(
            {},
            "pip",
            "could not install the dependencies from the wheelhouse (offline)",
            False,
            {},
            id="pip",
        ),
        pytest.param(
            {},
            "daemon-reload",
            "could not reload systemd for the release's units for {rid} (exit 1)",
            False,
            {},
            id="daemon-reload",
        ),
        pytest.param(
            {
                "env_file": f"# flipback: environment of one release; written at staging, "
                f"never changed.\n{TAMPERED}"
            },
            "",
            f"{INVALID}; fix it and run again (retrying as-is fails the same way): release: ",
            False,
            {},
            id="env-file-tampered",
        ),
        pytest.param(
            {"env_file": TAMPERED},
            "",
            f"{INVALID}; fix it and run again (retrying as-is fails the same way): env_file: ",
            False,
            {},
            id="env-file-not-rendered-by-the-filter",
        ),
        pytest.param(
            {"config": OTHER_CONFIG},
            "",
            f"{INVALID}; fix it and run again (retrying as-is fails the same way): release: ",
            False,
            {},
            id="config-of-another-release",
        ),
        pytest.param(
            {"build_id": "20261130T090000-aaaaaaaaaa"},
            "",
            f"{INVALID}; fix it and run again (retrying as-is fails the same way): release: ",
            False,
            {},
            id="other-build",
        ),
    ],
)
def test_failure(
    tmp_path, rid, artifact, runner, capsys, changes, fail, message, retryable, details
):
    runner.fail = fail

    code, result = run_main(args_for(tmp_path, artifact, **changes), capsys)

    assert code == 1
    assert result["failed"] is True
    assert result["msg"].startswith(message.format(rid=rid))
    assert result["retryable"] is retryable
    assert isinstance(result["elapsed"], float)
    assert {k: result[k] for k in details} == details
    if fail:
        manifest = read_manifest(str(tmp_path / "srv" / SERVICE), rid)
        assert manifest["status"] == "staging"
    else:
        assert not (tmp_path / "srv").exists()
        assert not (tmp_path / "systemd").exists()


def test_a_configuration_refused_names_every_problem(tmp_path, artifact, runner, capsys):
    env_file = configured(tmp_path / "srv" / SERVICE).env_text + 'PATH="/x"\nLD_PRELOAD="y"\n'

    code, result = run_main(args_for(tmp_path, artifact, env_file=env_file), capsys)

    assert code == 1
    assert [p.split(":")[0] for p in result["problems"]] == [
        "flipback_services (shop).env.PATH",
        "flipback_services (shop).env.LD_PRELOAD",
    ]
    assert result["retryable"] is False
    assert runner.calls == []


def test_live_lock_failure_names_the_holder(tmp_path, rid, artifact, runner, capsys):
    path = tmp_path / "srv" / SERVICE / "releases" / rid
    path.mkdir(parents=True)
    (path / ".staging-lock").write_text(f"{os.getpid()}\n")

    code, result = run_main(args_for(tmp_path, artifact), capsys)

    assert code == 1
    assert result["retryable"] is True
    assert result["holder"] == os.getpid()
    assert isinstance(result["elapsed"], float)
    assert (path / ".staging-lock").exists()
    assert runner.calls == []


# --------------------------------------------------------------------------- warm start


def test_deps_key_reaches_the_spec(tmp_path, rid, artifact, runner, capsys):
    code, result = run_main(args_for(tmp_path, artifact, deps_key="0123456789abcdef"), capsys)
    assert code == 0
    (spec,) = runner.specs
    assert spec.deps_key == "0123456789abcdef"
    assert result["venv_from"] is None
    manifest = read_manifest(str(tmp_path / "srv" / SERVICE), rid)
    assert manifest["deps_key"] == "0123456789abcdef"


@pytest.mark.parametrize(
    ("start", "fail", "warmed"),
    [
        pytest.param(True, "", True, id="started"),
        pytest.param(True, "--no-block", False, id="refused"),
        pytest.param(False, "", False, id="not-asked"),
    ],
)
def test_start_warms_the_instance_once_staged(
    tmp_path, rid, artifact, runner, capsys, start, fail, warmed
):
    runner.fail = fail

    code, result = run_main(args_for(tmp_path, artifact, start=start), capsys)

    # A refused warm start is no failure: the switch starts the instance and says why.
    assert code == 0
    assert result["warmed"] is warmed
    starts = [argv for argv in runner.calls if argv[:2] == ["systemctl", "start"]]
    expected = [["systemctl", "start", "--no-block", f"{SERVICE}@{rid}.service"]]
    assert starts == (expected if start else [])


@pytest.mark.parametrize("check_mode", [False, True], ids=["already-staged", "check"])
def test_start_does_nothing_when_nothing_was_staged(tmp_path, artifact, runner, capsys, check_mode):
    args = args_for(tmp_path, artifact, start=True)
    if not check_mode:
        run_main(args_for(tmp_path, artifact), capsys)
    runner.calls.clear()

    code, result = run_main(args, capsys, check_mode=check_mode)

    assert code == 0
    assert result["warmed"] is False
    assert runner.calls == []


# --------------------------------------------------------------------------- inline artifact


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def test_write_inline_writes_the_bytes_root_only(tmp_path):
    path = tmp_path / "srv" / SERVICE / ".incoming" / f"{BUILD}.tar"

    release_stage.write_inline(str(path), base64.b64encode(b"tar bytes").decode())

    assert path.read_bytes() == b"tar bytes"
    assert path.stat().st_mode & 0o7777 == 0o600
    assert path.parent.stat().st_mode & 0o7777 == 0o700


def test_write_inline_replaces_what_was_there(tmp_path):
    path = tmp_path / f"{BUILD}.tar"
    path.write_bytes(b"a longer, half-uploaded artifact")

    release_stage.write_inline(str(path), base64.b64encode(b"short").decode())

    assert path.read_bytes() == b"short"


def test_write_inline_makes_an_existing_file_root_only(tmp_path):
    path = tmp_path / f"{BUILD}.tar"
    path.write_bytes(b"old")
    path.chmod(0o644)

    release_stage.write_inline(str(path), base64.b64encode(b"new").decode())

    assert path.stat().st_mode & 0o7777 == 0o600


@pytest.mark.parametrize(
    "data",
    [
        pytest.param("not base64!", id="bad-characters"),
        pytest.param("YWJj\nZA==", id="newline"),
        pytest.param("YWJjZA=", id="bad-padding"),
    ],
)
def test_write_inline_refuses_what_is_not_base64(tmp_path, data):
    path = tmp_path / "incoming" / f"{BUILD}.tar"

    with pytest.raises(ReleaseError) as failed:
        release_stage.write_inline(str(path), data)

    assert failed.value.msg.startswith("artifact_b64: not valid base64 (")
    assert failed.value.msg.endswith("expected the artifact's bytes")
    assert (failed.value.details["field"], failed.value.retryable) == ("artifact_b64", False)
    assert not path.parent.exists()


def test_stage_from_the_inline_artifact(tmp_path, rid, artifact, runner, capsys):
    inline = tmp_path / "srv" / SERVICE / ".incoming" / f"{rid}.tar"
    args = args_for(tmp_path, artifact, artifact=str(inline), artifact_b64=b64(artifact))

    code, result = run_main(args, capsys)

    assert code == 0
    assert result["changed"] is True
    path = tmp_path / "srv" / SERVICE / "releases" / rid
    assert (path / "app.py").read_text() == "app=1"
    assert read_manifest(str(tmp_path / "srv" / SERVICE), rid)["status"] == "staged"
    # Written where an upload would have put it, then used up like one.
    assert not inline.exists()
    assert inline.parent.is_dir()


@pytest.mark.parametrize(
    ("staged_before", "check_mode"),
    [
        pytest.param(False, True, id="check"),
        pytest.param(True, False, id="already-staged"),
    ],
)
def test_the_inline_artifact_is_not_written(
    tmp_path, rid, artifact, runner, capsys, staged_before, check_mode
):
    inline = tmp_path / "elsewhere" / f"{rid}.tar"
    data = base64.b64encode(b"never written").decode()
    args = args_for(tmp_path, artifact, artifact=str(inline), artifact_b64=data)
    if staged_before:
        run_main(args_for(tmp_path, artifact), capsys)

    code, result = run_main(args, capsys, check_mode)

    assert code == 0
    assert result["changed"] is not staged_before
    assert not inline.parent.exists()


def test_an_invalid_inline_artifact_fails_naming_it(tmp_path, rid, artifact, runner, capsys):
    inline = tmp_path / "elsewhere" / f"{rid}.tar"

    args = args_for(tmp_path, artifact, artifact=str(inline), artifact_b64="%%%")

    code, result = run_main(args, capsys)

    assert code == 1
    assert result["msg"].startswith("artifact_b64: not valid base64")
    assert (result["field"], result["retryable"]) == ("artifact_b64", False)
    assert isinstance(result["elapsed"], float)
    assert not inline.parent.exists()
    assert not (tmp_path / "srv").exists()
    assert runner.calls == []


def test_an_inline_artifact_with_the_wrong_checksum_is_retryable(
    tmp_path, rid, artifact, runner, capsys
):
    inline = tmp_path / "elsewhere" / f"{rid}.tar"
    args = args_for(tmp_path, artifact, artifact=str(inline), artifact_b64=b64(artifact))
    args["checksum"] = "0" * 64

    code, result = run_main(args, capsys)

    assert code == 1
    assert (result["field"], result["retryable"]) == ("checksum", True)
    assert runner.calls == []


def test_an_invalid_release_writes_no_inline_artifact(tmp_path, artifact, runner, capsys):
    inline = tmp_path / "elsewhere" / "x.tar"
    args = args_for(
        tmp_path, artifact, artifact=str(inline), release="../../etc", artifact_b64=b64(artifact)
    )

    code, result = run_main(args, capsys)

    assert (code, result["field"]) == (1, "release")
    assert not inline.exists()


# --------------------------------------------------------------------------- RETURN


ANSIBLE_KEYS = {"changed", "failed", "msg", "invocation", "warnings", "deprecations"}
# AnsibleModule adds these itself to any result whose `path` exists (add_path_info).
PATH_INFO = {"uid", "gid", "owner", "group", "mode", "state", "size", "secontext"}


@pytest.mark.parametrize(
    ("again", "check_mode", "changes", "fail"),
    [
        pytest.param(False, False, {}, "", id="staged"),
        pytest.param(False, False, {"start": True}, "", id="staged-and-warmed"),
        pytest.param(True, False, {}, "", id="already-staged"),
        pytest.param(False, True, {}, "", id="check"),
        pytest.param(False, False, {}, "pip", id="failed"),
        pytest.param(False, False, {"artifact_b64": "%%%"}, "", id="bad-inline"),
        pytest.param(
            False,
            False,
            {"env_file": TAMPERED},
            "",
            id="config-invalid",
        ),
    ],
)
def test_every_key_returned_is_documented(
    tmp_path, artifact, runner, capsys, again, check_mode, changes, fail
):
    documented = yaml.safe_load(release_stage.RETURN)
    args = args_for(tmp_path, artifact, **changes)
    if again:
        run_main(args, capsys)
    runner.fail = fail

    code, result = run_main(args, capsys, check_mode=check_mode)

    assert set(result) - ANSIBLE_KEYS - PATH_INFO <= set(documented)
    if code == 0:
        assert {"release", "path", "warmed", "elapsed"} <= set(result)
        assert result["warmed"] is bool(changes.get("start"))
    else:
        assert {"retryable", "elapsed"} <= set(result)
