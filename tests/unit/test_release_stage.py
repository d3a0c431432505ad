"""Unit tests of library/release.py, action=stage: parameters to StageSpec, main()'s
results.

main() stages a real artifact (written by flipback_build.write_artifact) into a root
under tmp_path, configured as release_config works it out for that root
(test_flipback_runtime.a_release); only the commands (venv, pip, compileall, systemctl)
go through a fake runner, and the release's unit goes to a tmp_path unit directory. The
artifact is uploaded as the action plugin leaves it (`upload`, moved to
<home>/.incoming/<release>.tar) or sent inline (`artifact_b64`).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import tarfile
from pathlib import Path

import pytest
import release
import yaml
from ansible.module_utils import flipback_actions as actions
from ansible.module_utils.flipback_build import write_artifact
from ansible.module_utils.flipback_release import ReleaseError, read_manifest
from ansible.module_utils.flipback_stage import Stager, StageSpec, sha256_file
from fakes import StageRunner, run_arg, run_module, service_arg
from test_flipback_runtime import Release, a_release

SERVICE = "shop"
BUILD = "20261129T141500-3f2a9c1d0e"
SECRET = "s3cr3t-value-never-shown"
ENV = {"SHOP_TOKEN": SECRET}


def configured(root: Path | str) -> Release:
    """The release BUILD becomes with the shop's configuration on a host rooted at `root`."""
    return a_release(SERVICE, str(root), env=ENV, build_id=BUILD, user="nobody")


class Runner(StageRunner):
    """fakes.StageRunner, and the specs main() gave the Stager."""

    def __init__(self) -> None:
        super().__init__()
        self.specs: list[StageSpec] = []


@pytest.fixture
def runner(monkeypatch, tmp_path, ownership) -> Runner:
    """The module's Stager, with the fake runner and a tmp_path unit directory; records
    the specs it was given. Files are handed to root as fakes.Ownership says."""
    fake = Runner()

    def stager(spec: StageSpec) -> Stager:
        fake.specs.append(spec)
        return Stager(dataclasses.replace(spec, unit_dir=str(tmp_path / "systemd")), run=fake)

    monkeypatch.setattr(actions, "Stager", stager)
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


def home(tmp_path: Path) -> Path:
    return tmp_path / "srv" / SERVICE


def incoming(tmp_path: Path, release_id: str) -> Path:
    """Where the module stages the artifact from."""
    return home(tmp_path) / ".incoming" / f"{release_id}.tar"


def args_for(
    tmp_path: Path,
    artifact: Path,
    /,
    *,
    service: dict | None = None,
    build: dict | None = None,
    **changes,
) -> dict:
    """action=stage of BUILD's release at tmp_path/srv/shop, the artifact uploaded at
    `artifact`; `service` and `build` change those arguments' keys, `changes` the others
    (None: left out)."""
    conf = configured(home(tmp_path))
    args = {
        "action": "stage",
        "service": service_arg(**{"name": SERVICE, "ref": "main", **(service or {})}),
        "run": run_arg(home(tmp_path), by="alice"),
        "release": conf.id,
        "upload": str(artifact),
        "build": {
            "id": conf.build_id,
            "checksum": sha256_file(str(artifact)),
            "git_sha": "a" * 40,
            **(build or {}),
        },
        "config": conf.config,
        "env_file": conf.env_text,
        **changes,
    }
    return {key: value for key, value in args.items() if value is not None}


def run_main(args, capsys, check_mode=False):
    code, result, out = run_module(release, args, capsys, check_mode=check_mode)
    # The env file is never echoed, whatever happened.
    assert SECRET not in out
    return code, result


def test_stage(tmp_path, rid, artifact, runner, capsys):
    code, result = run_main(args_for(tmp_path, artifact), capsys)

    path = tmp_path / "srv" / SERVICE / "releases" / rid
    assert code == 0
    assert result["changed"] is True
    assert (result["release"], result["path"], result["replaces"]) == (rid, str(path), None)
    assert isinstance(result["elapsed"], float)
    assert (path / "app.py").read_text() == "app=1"
    assert os.readlink(path / "sock") == f"/run/flipback-{SERVICE}/{rid}/app.sock"
    manifest = read_manifest(str(tmp_path / "srv" / SERVICE), rid)
    assert (manifest["status"], manifest["deployed_by"], manifest["git_sha"]) == (
        "staged",
        "alice",
        "a" * 40,
    )
    # Moved where staging reads it, then used up.
    assert not artifact.exists()
    assert not incoming(tmp_path, rid).exists()
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
        "action": "stage",
        "service": {"name": SERVICE, "port": 8000},
        "release": conf.id,
        "upload": str(artifact),
        "build": {"id": conf.build_id, "checksum": sha256_file(str(artifact))},
        "config": conf.config,
        "env_file": conf.env_text,
    }

    # Check mode: the default root /srv/shop is only looked at, never written.
    code, result = run_main(args, capsys, check_mode=True)

    assert code == 0
    assert result["path"] == f"/srv/{SERVICE}/releases/{conf.id}"
    assert artifact.exists()
    (spec,) = runner.specs
    assert (spec.root, spec.socket_dir, spec.python, spec.by, spec.run_id) == (
        f"/srv/{SERVICE}",
        f"/run/flipback-{SERVICE}",
        "/usr/bin/python3",
        "unknown",
        None,
    )
    assert spec.artifact == f"/srv/{SERVICE}/.incoming/{conf.id}.tar"
    # The manifest keeps what the build and the service say of the release.
    assert spec.manifest == {
        "git_sha": None,
        "ref": None,
        "source": None,
        "health": {
            "path": "/health",
            "expect_status": [200],
            "expect_json": {},
            "release_in": "header",
            "host": "localhost",
            "timeout": 30.0,
            "unhealthy_answers": 10,
        },
    }
    assert (spec.build_id, spec.deps_key) == (BUILD, "")
    assert (spec.config, spec.env_text) == (conf.config, conf.env_text)
    assert spec.unit_dir == "/etc/systemd/system"


def test_the_manifest_is_made_of_the_build_and_the_service(tmp_path, artifact, runner, capsys):
    args = args_for(
        tmp_path,
        artifact,
        service={"ref": "v2", "health": {"path": "/healthz", "expect_json": {"ok": True}}},
        build={"source": "https://git.example/shop.git", "deps_key": "0123456789abcdef"},
        run=run_arg(home(tmp_path), by="carol", run_id="ctl:1:2"),
    )

    code, _result = run_main(args, capsys, check_mode=True)

    assert code == 0
    (spec,) = runner.specs
    assert {k: spec.manifest[k] for k in ("git_sha", "ref", "source")} == {
        "git_sha": "a" * 40,
        "ref": "v2",
        "source": "https://git.example/shop.git",
    }
    assert (spec.manifest["health"]["path"], spec.manifest["health"]["expect_json"]) == (
        "/healthz",
        {"ok": True},
    )
    assert (spec.by, spec.run_id, spec.deps_key) == ("carol", "ctl:1:2", "0123456789abcdef")


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        pytest.param("build.id", "missing required arguments: id found in build", id="build-id"),
        pytest.param("build", "build: missing; action=stage needs it", id="build"),
        pytest.param("config", "config: missing; action=stage needs it", id="config"),
        pytest.param("env_file", "env_file: missing; action=stage needs it", id="env-file"),
    ],
)
def test_required_arguments(tmp_path, artifact, runner, capsys, drop, message):
    args = args_for(tmp_path, artifact)
    if drop == "build.id":
        del args["build"]["id"]
    else:
        del args[drop]

    code, result = run_main(args, capsys)

    assert code == 1
    assert message in result["msg"]
    assert runner.specs == []
    assert artifact.exists()


# A configuration its release id does not stand for: checked before anything is written.
TAMPERED = 'SHOP_TOKEN="tampered"\n'
OTHER_CONFIG = a_release(SERVICE, "/srv/shop", env=ENV, build_id=BUILD, workers=3).config
INVALID = "invalid configuration (1 problem), nothing was changed on any host"


@pytest.mark.parametrize(
    ("changes", "fail", "message", "retryable", "details"),
    [
        pytest.param(
            {"build": {"checksum": "0" * 64}},
            "",
            "artifact: checksum ",
            True,
            {"field": "checksum"},
            id="checksum",
        ),
        pytest.param(
            {"upload": None},
            "",
            "artifact: {home}/.incoming/{rid}.tar does not exist on the host",
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
            {"service": {"name": "Shop"}},
            "",
            "service: got 'Shop', expected",
            False,
            {"field": "service", "value": "Shop"},
            id="service",
        ),
        pytest.param(
            {},
            "venv",
            "could not create the virtualenv for {rid} (exit 1): venv exploded",
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
            {"build": {"id": "20261130T090000-aaaaaaaaaa"}},
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
    assert result["msg"].startswith(message.format(rid=rid, home=home(tmp_path)))
    assert result["retryable"] is retryable
    assert isinstance(result["elapsed"], float)
    assert {k: result[k] for k in details} == details
    if fail:
        manifest = read_manifest(str(tmp_path / "srv" / SERVICE), rid)
        assert manifest["status"] == "staging"
    else:
        # At most the upload moved to <home>/.incoming: no release, no unit.
        assert not (home(tmp_path) / "releases").exists()
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
    code, result = run_main(
        args_for(tmp_path, artifact, build={"deps_key": "0123456789abcdef"}), capsys
    )
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
        pytest.param(True, "start", False, id="refused"),
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


def place(path: Path, data: str) -> None:
    actions.place_artifact(str(path), upload=None, data_b64=data)


def test_place_artifact_writes_the_inline_bytes_root_only(tmp_path):
    path = incoming(tmp_path, BUILD)

    place(path, base64.b64encode(b"tar bytes").decode())

    assert path.read_bytes() == b"tar bytes"
    assert path.stat().st_mode & 0o7777 == 0o600
    assert path.parent.stat().st_mode & 0o7777 == 0o700


def test_place_artifact_replaces_what_was_there(tmp_path):
    path = tmp_path / f"{BUILD}.tar"
    path.write_bytes(b"a longer, half-uploaded artifact")

    place(path, base64.b64encode(b"short").decode())

    assert path.read_bytes() == b"short"


def test_place_artifact_makes_an_existing_file_root_only(tmp_path):
    path = tmp_path / f"{BUILD}.tar"
    path.write_bytes(b"old")
    path.chmod(0o644)

    place(path, base64.b64encode(b"new").decode())

    assert path.stat().st_mode & 0o7777 == 0o600


def test_place_artifact_moves_the_upload_root_only(tmp_path, ownership):
    upload = tmp_path / "tmp" / "upload.tar"
    upload.parent.mkdir()
    upload.write_bytes(b"uploaded")
    upload.chmod(0o644)
    path = incoming(tmp_path, BUILD)

    actions.place_artifact(str(path), upload=str(upload), data_b64=None)

    assert not upload.exists()
    assert path.read_bytes() == b"uploaded"
    assert path.stat().st_mode & 0o7777 == 0o600
    assert path.parent.stat().st_mode & 0o7777 == 0o700
    assert (path.stat().st_uid, path.stat().st_gid) == (0, 0)


NOT_BASE64 = [
    pytest.param("not base64!", id="bad-characters"),
    pytest.param("YWJj\nZA==", id="newline"),
    pytest.param("YWJjZA=", id="bad-padding"),
]


@pytest.mark.parametrize("data", NOT_BASE64)
def test_place_artifact_refuses_what_is_not_base64(tmp_path, data):
    path = tmp_path / "incoming" / f"{BUILD}.tar"

    with pytest.raises(ReleaseError) as failed:
        place(path, data)

    assert failed.value.msg.startswith("artifact_b64: not valid base64 (")
    assert failed.value.msg.endswith("expected the artifact's bytes")
    assert (failed.value.details["field"], failed.value.retryable) == ("artifact_b64", False)
    assert not path.exists()


@pytest.mark.parametrize("data", NOT_BASE64[:1])
def test_place_artifact_refusing_base64_makes_no_directory(tmp_path, data):
    path = tmp_path / "incoming" / f"{BUILD}.tar"

    with pytest.raises(ReleaseError):
        place(path, data)

    assert not path.parent.exists()


def test_stage_from_the_inline_artifact(tmp_path, rid, artifact, runner, capsys):
    inline = incoming(tmp_path, rid)
    args = args_for(tmp_path, artifact, upload=None, artifact_b64=b64(artifact))

    code, result = run_main(args, capsys)

    assert code == 0
    assert result["changed"] is True
    path = home(tmp_path) / "releases" / rid
    assert (path / "app.py").read_text() == "app=1"
    assert read_manifest(str(home(tmp_path)), rid)["status"] == "staged"
    # Written where an upload is moved to, then used up like one.
    assert not inline.exists()
    assert inline.parent.is_dir()


def test_upload_and_inline_artifact_are_mutually_exclusive(tmp_path, artifact, runner, capsys):
    args = args_for(tmp_path, artifact, artifact_b64=b64(artifact))

    code, result = run_main(args, capsys)

    assert code == 1
    assert "parameters are mutually exclusive: upload|artifact_b64" in result["msg"]
    assert runner.specs == []
    assert artifact.exists()


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
    data = base64.b64encode(b"never written").decode()
    args = args_for(tmp_path, artifact, upload=None, artifact_b64=data)
    if staged_before:
        run_main(args_for(tmp_path, artifact), capsys)

    code, result = run_main(args, capsys, check_mode)

    assert code == 0
    assert result["changed"] is not staged_before
    assert not incoming(tmp_path, rid).exists()
    if check_mode:
        assert not (tmp_path / "srv").exists()


@pytest.mark.parametrize("check_mode", [False, True], ids=["already-staged", "check"])
def test_the_upload_is_not_moved(tmp_path, rid, artifact, runner, capsys, check_mode):
    if not check_mode:
        run_main(args_for(tmp_path, artifact), capsys)
        artifact.write_bytes(b"uploaded again")

    code, result = run_main(args_for(tmp_path, artifact), capsys, check_mode)

    assert code == 0
    assert result["changed"] is check_mode
    assert not incoming(tmp_path, rid).exists()


def test_an_invalid_inline_artifact_fails_naming_it(tmp_path, rid, artifact, runner, capsys):
    args = args_for(tmp_path, artifact, upload=None, artifact_b64="%%%")

    code, result = run_main(args, capsys)

    assert code == 1
    assert result["msg"].startswith("artifact_b64: not valid base64")
    assert (result["field"], result["retryable"]) == ("artifact_b64", False)
    assert isinstance(result["elapsed"], float)
    assert not incoming(tmp_path, rid).exists()
    assert not (home(tmp_path) / "releases").exists()
    assert runner.calls == []


def test_an_inline_artifact_with_the_wrong_checksum_is_retryable(
    tmp_path, rid, artifact, runner, capsys
):
    args = args_for(
        tmp_path, artifact, upload=None, artifact_b64=b64(artifact), build={"checksum": "0" * 64}
    )

    code, result = run_main(args, capsys)

    assert code == 1
    assert (result["field"], result["retryable"]) == ("checksum", True)
    assert runner.calls == []


def test_an_invalid_release_writes_no_inline_artifact(tmp_path, artifact, runner, capsys):
    args = args_for(
        tmp_path, artifact, upload=None, release="../../etc", artifact_b64=b64(artifact)
    )

    code, result = run_main(args, capsys)

    assert (code, result["field"]) == (1, "release")
    assert not (tmp_path / "srv").exists()


def test_an_upload_that_is_not_there_fails_naming_it(tmp_path, rid, artifact, runner, capsys):
    args = args_for(tmp_path, artifact, upload=str(tmp_path / "gone.tar"))

    code, result = run_main(args, capsys)

    assert code == 1
    assert result["field"] == "artifact"
    assert result["retryable"] is True


# --------------------------------------------------------------------------- RETURN


ANSIBLE_KEYS = {"changed", "failed", "msg", "invocation", "warnings", "deprecations"}
# AnsibleModule adds these itself to any result whose `path` exists (add_path_info).
PATH_INFO = {"uid", "gid", "owner", "group", "mode", "state", "size", "secontext"}
# Returned by action=stage but missing from release.py's RETURN (release_stage documented
# them): see test_what_stage_returns_is_documented.
UNDOCUMENTED = {"path", "replaces", "venv_from", "venv_tool", "problems"}


def test_what_stage_returns_is_documented():
    assert set(yaml.safe_load(release.RETURN)) >= UNDOCUMENTED


def test_stage_returns_the_undocumented_keys(tmp_path, artifact, runner, capsys):
    """What test_what_stage_returns_is_documented expects documented is returned."""
    _code, refused = run_main(args_for(tmp_path, artifact, upload=None, env_file=TAMPERED), capsys)
    _code, staged = run_main(args_for(tmp_path, artifact), capsys)

    assert {"path", "replaces", "venv_from", "venv_tool"} <= set(staged)
    assert "problems" in refused


@pytest.mark.parametrize(
    ("again", "check_mode", "changes", "fail"),
    [
        pytest.param(False, False, {}, "", id="staged"),
        pytest.param(False, False, {"start": True}, "", id="staged-and-warmed"),
        pytest.param(True, False, {}, "", id="already-staged"),
        pytest.param(False, True, {}, "", id="check"),
        pytest.param(False, False, {}, "pip", id="failed"),
        pytest.param(False, False, {"upload": None, "artifact_b64": "%%%"}, "", id="bad-inline"),
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
    documented = yaml.safe_load(release.RETURN)
    args = args_for(tmp_path, artifact, **changes)
    if again:
        run_main(args, capsys)
    runner.fail = fail

    code, result = run_main(args, capsys, check_mode=check_mode)

    assert set(result) - ANSIBLE_KEYS - PATH_INFO - UNDOCUMENTED <= set(documented)
    if code == 0:
        assert {"release", "path", "warmed", "elapsed"} <= set(result)
        assert result["warmed"] is bool(changes.get("start"))
    else:
        assert {"retryable", "elapsed"} <= set(result)
