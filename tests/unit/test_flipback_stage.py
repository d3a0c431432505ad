"""Unit tests of module_utils/flipback_stage.py: real artifacts staged into tmp_path roots.

Artifacts are written by flipback_build.write_artifact itself, so the format under test
is the one the build produces; the virtualenv, pip and systemctl run through a fake
runner. Each release is configured as release_config would work it out for its root
(test_flipback_runtime.a_release), and its unit goes to a tmp_path unit directory.
"""

from __future__ import annotations

import functools
import io
import json
import os
import pwd
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from ansible.module_utils.flipback_build import write_artifact
from ansible.module_utils.flipback_release import (
    ReleaseError,
    manifest_problem,
    read_history,
    read_manifest,
)
from ansible.module_utils.flipback_runtime import (
    NGINX_DEFAULTS,
    ConfigInvalid,
    env_file_text,
    parse_env_file,
    resolve_release,
    unit_text,
)
from ansible.module_utils.flipback_stage import (
    Stager,
    StageSpec,
    find_donor,
    link_venv,
    safe_members,
    sha256_file,
)
from fakes import ReleaseTree, StageRunner
from test_flipback_runtime import Release, a_release

SERVICE = "shop"
BUILD = "20261129T141500-3f2a9c1d0e"
OLD = "20261128T120000-aaaaaaaaaa"
# A release id of no staged release (the pure helpers take any).
NEW = "20261129T141500-0123456789"
HEALTH = {"path": "/health", "expect_status": [200]}
DEPS = ["fastapi==0.165.0", "uvicorn==0.54.0"]
USER = "nobody"
SECRET = "s3cr3t-hunter2"
ENV = {"SHOP_SECRET": SECRET, "GREETING": 'say "hi" to $USER'}


@functools.cache
def configured(root: Path) -> Release:
    """The release BUILD becomes with the shop's configuration on a host rooted at `root`:
    the id covers the root (the unit names its paths), so each test's root has its own."""
    return a_release(SERVICE, str(root), env=ENV, build_id=BUILD, user=USER, workers=2)


def source_tar(extra: Sequence[tuple[str, bytes | None]] = ()) -> bytes:
    """The shop's code; `extra` adds files (name, data) or directories (name, None)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data, mode in [
            ("./app.py", b"app = object()\n", 0o644),
            ("./pyproject.toml", b"[project]\nname = 'shop'\n", 0o644),
            ("./bin/run", b"#!/bin/sh\n", 0o755),
            ("./.env.example", b"DEBUG=0\n", 0o600),
        ]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("./pkg")
        info.type, info.mode = tarfile.DIRTYPE, 0o700
        tar.addfile(info)
        for name, data in extra:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build_artifact(
    tmp_path: Path,
    deps: Sequence[str] = DEPS,
    *,
    code_only: bool = False,
    extra: Sequence[tuple[str, bytes | None]] = (),
    project: Path | None = None,
    uv: bool = False,
) -> Path:
    """The build's full artifact, or its code-only one (no wheels/) when code_only;
    `project` is the service's own wheel (a service that is a package); with `uv`, the
    artifact brings uv's wheel (tools/)."""
    wheel = tmp_path / "wheelhouse" / "fastapi-0.165.0-py3-none-any.whl"
    wheel.parent.mkdir(exist_ok=True)
    wheel.write_bytes(b"PK fake wheel")
    artifact = tmp_path / "incoming" / f"{BUILD}.tar"
    artifact.parent.mkdir(exist_ok=True)
    meta = {"service": SERVICE, "id": BUILD, "dependencies": list(deps)}
    meta["project"] = project.name if project else None
    wheels = [] if code_only else [str(wheel)]
    shipped = [str(project)] if project else []
    tools = [str(uv_wheel(tmp_path))] if uv else []
    write_artifact(str(artifact), source_tar(extra), wheels, 1_795_953_600, meta, shipped, tools)
    return artifact


def uv_wheel(tmp_path: Path) -> Path:
    """A wheel shaped like uv's: its binary under uv-<version>.data/scripts/."""
    wheel = tmp_path / "tools" / "uv-0.13.9-py3-none-manylinux_2_17_x86_64.whl"
    wheel.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("uv-0.13.9.data/scripts/uv", "#!/bin/sh\necho fake uv\n")
        archive.writestr("uv-0.13.9.dist-info/METADATA", "Name: uv\nVersion: 0.13.9\n")
    return wheel


def raw_artifact(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    """An artifact that write_artifact would never produce: one extra, hostile member."""
    artifact = tmp_path / "incoming" / f"{BUILD}.tar"
    artifact.parent.mkdir(exist_ok=True)
    with tarfile.open(artifact, "w", format=tarfile.PAX_FORMAT) as tar:
        meta = json.dumps({"dependencies": []}).encode()
        info = tarfile.TarInfo("flipback.json")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return artifact


@pytest.fixture
def chown_calls(ownership) -> list[tuple[str, int, int]]:
    """Every os.chown and os.fchown (named by the file's path), as the release's
    configuration is written (fakes.Ownership: real as root, else reported by os.stat)."""
    return ownership.chowns


@pytest.fixture
def lchown_calls(ownership) -> list[tuple[str, int, int]]:
    """Every os.lchown (fakes.Ownership). Staging that far writes the configuration too:
    the same Ownership stands in for its owners."""
    return ownership.lchowns


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "srv" / SERVICE


@pytest.fixture
def artifact(tmp_path) -> Path:
    return build_artifact(tmp_path)


@pytest.fixture
def rid(root) -> str:
    """The id of the release staged into `root`."""
    return configured(root).id


def make_spec(root: Path, artifact: Path, tmp_path: Path, **changes) -> StageSpec:
    conf = configured(root)
    fields = {
        "service": SERVICE,
        "root": str(root),
        "release": conf.id,
        "artifact": str(artifact),
        "checksum": sha256_file(str(artifact)) if artifact.exists() else "0" * 64,
        "socket_dir": str(tmp_path / "run" / f"flipback-{SERVICE}"),
        "python": sys.executable,
        "manifest": {"git_sha": "f" * 40, "ref": "main", "health": HEALTH},
        "by": "alice",
        "build_id": conf.build_id,
        "config": conf.config,
        "env_text": conf.env_text,
        "unit_dir": str(tmp_path / "systemd"),
        "tool_cache": str(tmp_path / "tool-cache"),
    }
    fields.update(changes)
    return StageSpec(**fields)


def release(root: Path, *parts: str) -> Path:
    path = root / "releases" / configured(root).id
    return path / Path(*parts) if parts else path


def go_live(root: Path, release_id: str) -> None:
    tree = ReleaseTree(root, SERVICE)
    tree.write_release(release_id, None)
    tree.current(release_id).event(release_id, "active", by="bob")


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


# --------------------------------------------------------------------------- staging


@pytest.mark.parametrize("previous", [None, OLD], ids=["first", "replaces-current"])
def test_fresh_stage(root, rid, artifact, tmp_path, lchown_calls, previous):
    if previous:
        go_live(root, previous)
    spec = make_spec(root, artifact, tmp_path)
    runner = StageRunner()

    result = Stager(spec, run=runner).stage(check_mode=False)

    path = release(root)
    assert result == {
        "release": rid,
        "path": str(path),
        "changed": True,
        "replaces": previous,
        "venv_from": None,
        "venv_base": None,
        # No uv in this artifact (an older build's): venv and pip made the venv.
        "venv_tool": "venv+pip",
    }
    assert (path / "app.py").read_bytes() == b"app = object()\n"
    assert (path / "pyproject.toml").is_file()
    assert (path / ".env.example").read_text() == "DEBUG=0\n"
    assert (path / "pkg").is_dir()
    assert (path / "bin" / "run").stat().st_mode & 0o777 == 0o755
    assert (path / "app.py").stat().st_mode & 0o777 == 0o644
    assert (path / ".env.example").stat().st_mode & 0o777 == 0o644
    assert (path / "pkg").stat().st_mode & 0o777 == 0o755
    assert not (path / ".wheels").exists()
    assert not (path / "wheels").exists()
    assert not (path / "flipback.json").exists()
    assert not (path / ".staging-lock").exists()
    assert os.readlink(path / "sock") == os.path.join(spec.socket_dir, rid, "app.sock")
    assert not artifact.exists()

    manifest = read_manifest(str(root), rid)
    assert manifest is not None
    assert manifest_problem(manifest, rid, SERVICE) is None
    assert {k: manifest[k] for k in ("id", "service", "checksum", "replaces", "deployed_by")} == {
        "id": rid,
        "service": SERVICE,
        "checksum": spec.checksum,
        "replaces": previous,
        "deployed_by": "alice",
    }
    assert manifest["status"] == "staged"
    assert (manifest["git_sha"], manifest["ref"], manifest["health"]) == ("f" * 40, "main", HEALTH)
    assert manifest["deployed_at"].endswith("Z")

    last = read_history(str(root))[-1]
    assert (last["release"], last["event"], last["by"], last["from"]) == (
        rid,
        "staged",
        "alice",
        previous,
    )
    assert last["expect"] == HEALTH

    venv = str(path / "venv")
    assert runner.calls[0] == [sys.executable, "-m", "venv", venv]
    pip = runner.calls[1]
    assert pip[:3] == [f"{venv}/bin/python", "-m", "pip"]
    assert "--no-index" in pip
    assert pip[pip.index("--find-links") + 1] == str(path / ".wheels")
    assert pip[-2:] == DEPS
    assert runner.calls[2][:3] == [f"{venv}/bin/python", "-m", "compileall"]
    assert runner.calls[2][-1] == str(path)
    assert runner.calls[3:] == [["systemctl", "daemon-reload"]]

    owned = {p for p, uid, gid in lchown_calls if (uid, gid) == (0, 0)}
    # Everything but the configuration (root:<service group>, see test_configure_*).
    config = {str(path / ".flipback"), str(path / ".flipback" / "env")}
    on_disk = {str(path)} | {
        os.path.join(d, n) for d, dirs, files in os.walk(path) for n in dirs + files
    }
    assert on_disk - config <= owned
    assert sorted(os.listdir(path / ".flipback")) == ["env"]
    assert (path / "app.py").stat().st_uid == 0


def test_no_dependencies_skips_pip(root, tmp_path, lchown_calls):
    artifact = build_artifact(tmp_path, deps=[])
    runner = StageRunner()

    Stager(make_spec(root, artifact, tmp_path), run=runner).stage(check_mode=False)

    assert runner.steps == ["venv", "compileall", "daemon-reload"]


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_already_staged_is_left_alone(root, rid, artifact, tmp_path, lchown_calls, check_mode):
    Stager(make_spec(root, artifact, tmp_path), run=StageRunner()).stage(check_mode=False)
    before = (release(root, "manifest.json")).read_text()
    events = len(read_history(str(root)))
    runner = StageRunner()

    result = Stager(make_spec(root, artifact, tmp_path), run=runner).stage(check_mode)

    assert result == {"release": rid, "path": str(release(root)), "changed": False}
    assert runner.calls == []
    assert release(root, "manifest.json").read_text() == before
    assert len(read_history(str(root))) == events


def test_check_mode_writes_nothing(root, rid, artifact, tmp_path):
    runner = StageRunner()

    result = Stager(make_spec(root, artifact, tmp_path), run=runner).stage(check_mode=True)

    assert result == {"release": rid, "path": str(release(root)), "changed": True}
    assert not root.exists()
    assert artifact.exists()
    assert runner.calls == []


def test_checksum_mismatch(root, artifact, tmp_path):
    runner = StageRunner()
    spec = make_spec(root, artifact, tmp_path, checksum="0" * 64)

    with pytest.raises(ReleaseError) as info:
        Stager(spec, run=runner).stage(check_mode=False)

    error = info.value
    assert error.retryable is True
    assert error.details["field"] == "checksum"
    assert f"checksum {sha256_file(str(artifact))} does not match the build's {'0' * 64}" in (
        error.msg
    )
    assert not root.exists()
    assert artifact.exists()
    assert runner.calls == []


def test_artifact_missing(root, tmp_path):
    missing = tmp_path / "incoming" / "nothing.tar"
    runner = StageRunner()

    with pytest.raises(ReleaseError) as info:
        Stager(make_spec(root, missing, tmp_path), run=runner).stage(check_mode=False)

    assert info.value.details["field"] == "artifact"
    assert f"{missing} does not exist on the host" in info.value.msg
    assert not root.exists()
    assert runner.calls == []


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_live_staging_lock_is_refused(root, rid, artifact, tmp_path, check_mode):
    path = release(root)
    path.mkdir(parents=True)
    (path / ".staging-lock").write_text(f"{os.getpid()}\n")
    (path / "manifest.json").write_text(json.dumps({"id": rid, "status": "staging"}))
    (path / "app.py").write_text("half")
    runner = StageRunner()

    with pytest.raises(ReleaseError) as info:
        Stager(make_spec(root, artifact, tmp_path), run=runner).stage(check_mode)

    error = info.value
    assert error.retryable is True
    assert error.details["holder"] == os.getpid()
    assert f"being staged by another run (pid {os.getpid()})" in error.msg
    assert sorted(p.name for p in path.iterdir()) == [".staging-lock", "app.py", "manifest.json"]
    assert (path / "app.py").read_text() == "half"
    assert artifact.exists()
    assert runner.calls == []


@pytest.mark.parametrize("lock", ["dead-pid", "no-lock", "garbage"])
def test_half_finished_release_is_wiped_and_staged_again(
    root, rid, artifact, tmp_path, lchown_calls, lock
):
    path = release(root)
    path.mkdir(parents=True)
    if lock == "dead-pid":
        (path / ".staging-lock").write_text(f"{dead_pid()}\n")
    elif lock == "garbage":
        (path / ".staging-lock").write_text("not a pid\n")
    (path / "manifest.json").write_text(json.dumps({"id": rid, "status": "staging"}))
    (path / "leftover.py").write_text("from the killed run")

    result = Stager(make_spec(root, artifact, tmp_path), run=StageRunner()).stage(False)

    assert result["changed"] is True
    assert not (path / "leftover.py").exists()
    assert not (path / ".staging-lock").exists()
    assert read_manifest(str(root), rid)["status"] == "staged"
    assert (path / "app.py").is_file()


@pytest.mark.parametrize(
    ("fail", "what"),
    [
        pytest.param("venv", "create the virtualenv", id="venv"),
        pytest.param("pip", "install the dependencies from the wheelhouse (offline)", id="pip"),
        pytest.param("compileall", "precompile bytecode", id="compileall"),
        pytest.param("daemon-reload", "reload systemd for the release's units", id="daemon-reload"),
    ],
)
def test_command_failure_leaves_the_release_unusable(
    root, rid, artifact, tmp_path, lchown_calls, fail, what
):
    runner = StageRunner(fail=fail)

    with pytest.raises(ReleaseError) as info:
        Stager(make_spec(root, artifact, tmp_path), run=runner).stage(check_mode=False)

    error = info.value
    assert error.retryable is False
    assert f"could not {what} for {rid} (exit 1): {fail} exploded" in error.msg
    assert "stays marked 'staging' and is never used" in error.msg
    assert runner.steps[-1] == fail
    manifest = read_manifest(str(root), rid)
    assert manifest is not None
    assert manifest["status"] == "staging"
    assert manifest_problem(manifest, rid, SERVICE) is not None
    assert not Stager(make_spec(root, artifact, tmp_path)).staged()
    assert artifact.exists()
    assert [e["event"] for e in read_history(str(root))] == []


def test_disk_failure_is_retryable(root, rid, artifact, tmp_path, monkeypatch):
    def no_symlink(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "symlink", no_symlink)

    with pytest.raises(ReleaseError) as info:
        Stager(make_spec(root, artifact, tmp_path), run=StageRunner()).stage(check_mode=False)

    assert info.value.retryable is True
    assert "No space left on device" in info.value.msg
    assert read_manifest(str(root), rid)["status"] == "staging"
    assert artifact.exists()


@pytest.mark.parametrize(
    ("changes", "field", "value"),
    [
        pytest.param({"release": "../../etc"}, "release", "../../etc", id="release-traversal"),
        pytest.param({"release": "latest"}, "release", "latest", id="release-name"),
        pytest.param({"service": "../shop"}, "service", "../shop", id="service-traversal"),
        pytest.param({"service": "Shop"}, "service", "Shop", id="service-uppercase"),
    ],
)
@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_invalid_input_is_rejected_before_any_write(
    root, artifact, tmp_path, changes, field, value, check_mode
):
    runner = StageRunner()

    with pytest.raises(ReleaseError) as info:
        Stager(make_spec(root, artifact, tmp_path, **changes), run=runner).stage(check_mode)

    assert (info.value.details["field"], info.value.details["value"]) == (field, value)
    assert info.value.msg.startswith(f"{field}: got {value!r}, expected ")
    assert info.value.retryable is False
    assert not root.exists()
    assert not (tmp_path / "etc").exists()
    assert artifact.exists()
    assert runner.calls == []


# --------------------------------------------------------------------------- configuration


def test_configure_writes_the_env_file_and_the_unit_then_reloads_systemd(
    root, rid, artifact, tmp_path, lchown_calls, chown_calls
):
    spec = make_spec(root, artifact, tmp_path)
    conf_dir = release(root, ".flipback")
    env_file = conf_dir / "env"
    unit_file = tmp_path / "systemd" / f"{SERVICE}@{rid}.service"
    runner = StageRunner()
    on_reload: list[tuple[bool, bool]] = []

    def run(argv):
        if argv[:2] == ["systemctl", "daemon-reload"]:
            on_reload.append((env_file.is_file(), unit_file.is_file()))
        return runner(argv)

    Stager(spec, run=run).stage(check_mode=False)

    gid = pwd.getpwnam(USER).pw_gid
    assert gid != 0
    assert stat_mode(conf_dir) == 0o750
    assert stat_mode(env_file) == 0o640
    assert stat_mode(unit_file) == 0o644
    assert env_file.read_text() == configured(root).env_text
    assert parse_env_file(env_file.read_text()) == ENV
    assert unit_file.read_text() == unit_text(
        service=SERVICE, home=str(root), user=USER, app="app:app", factory=False, workers=2
    )
    # Owned by root, the env file readable by the service's group only; written by
    # rename, owner and mode set before the content.
    pid = os.getpid()
    assert chown_calls == [
        (str(conf_dir), 0, gid),
        (f"{env_file}.tmp.{pid}", 0, gid),
        (f"{unit_file}.tmp.{pid}", 0, 0),
    ]
    for path, group in ((conf_dir, gid), (env_file, gid), (unit_file, 0)):
        assert (path.stat().st_uid, path.stat().st_gid) == (0, group), path
    assert sorted(os.listdir(conf_dir)) == ["env"]
    assert sorted(os.listdir(unit_file.parent)) == [unit_file.name]
    # systemd hears of the unit once both files are in place, and only once.
    assert on_reload == [(True, True)]
    assert runner.steps[-1] == "daemon-reload"


def test_the_manifest_records_the_build_and_the_config_never_env_values(
    root, rid, artifact, tmp_path, lchown_calls
):
    Stager(make_spec(root, artifact, tmp_path), run=StageRunner()).stage(check_mode=False)

    manifest = read_manifest(str(root), rid)
    assert manifest["build"] == BUILD
    assert manifest["config"] == configured(root).config
    assert manifest["config"]["env_names"] == ["GREETING", "SHOP_SECRET"]
    text = release(root, "manifest.json").read_text()
    for value in ENV.values():
        assert json.dumps(value)[1:-1] not in text
    assert SECRET not in text


def test_the_manifest_records_every_pin_where_it_came_from_and_what_was_added(
    root, rid, tmp_path, lchown_calls
):
    wheel = tmp_path / "wheelhouse" / "websockets-15.0.1-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"PK fake wheel")
    artifact = tmp_path / "incoming" / f"{BUILD}.tar"
    artifact.parent.mkdir()
    pins = ["uvicorn==0.54.0", "websockets==15.0.1"]
    meta = {
        "service": SERVICE,
        "id": BUILD,
        "dependencies": pins,
        "dependency_source": "uv.lock",
        "added": ["uvicorn==0.54.0"],
        "project": None,
    }
    write_artifact(str(artifact), source_tar(()), [str(wheel)], 1_795_953_600, meta, [])

    Stager(make_spec(root, artifact, tmp_path), run=StageRunner()).stage(check_mode=False)

    manifest = read_manifest(str(root), rid)
    assert manifest["status"] == "staged"
    assert (manifest["dependencies"], manifest["dependency_source"], manifest["added"]) == (
        pins,
        "uv.lock",
        ["uvicorn==0.54.0"],
    )
    assert manifest["project"] is None


@pytest.mark.parametrize(
    "shipped",
    [
        pytest.param([("./.flipback", b"PATH=/tmp/evil\n")], id="file"),
        pytest.param([("./.flipback", None), ("./.flipback/env", b'PATH="/tmp/evil"\n')], id="dir"),
        pytest.param(
            [
                ("./.flipback", None),
                ("./.flipback/nested", None),
                ("./.flipback/nested/x", b"x"),
                ("./.flipback/unit", b"[Service]\n"),
            ],
            id="dir-with-more",
        ),
    ],
)
def test_a_flipback_file_or_dir_shipped_in_the_code_is_replaced(
    root, tmp_path, lchown_calls, shipped
):
    artifact = build_artifact(tmp_path, extra=shipped)

    result = Stager(make_spec(root, artifact, tmp_path), run=StageRunner()).stage(False)

    assert result["changed"] is True
    conf_dir = release(root, ".flipback")
    assert conf_dir.is_dir() and not conf_dir.is_symlink()
    assert stat_mode(conf_dir) == 0o750
    assert sorted(os.listdir(conf_dir)) == ["env"]
    assert (conf_dir / "env").read_text() == configured(root).env_text
    assert read_manifest(str(root), release(root).name)["status"] == "staged"


def tampered(root: Path, what: str) -> dict:
    """StageSpec changes whose configuration the release id does not stand for."""
    conf = configured(root)
    return {
        "env-value": {"env_text": conf.env_text.replace(SECRET, "other")},
        "env-added": {"env_text": conf.env_text + 'ZZ="1"\n'},
        "env-not-canonical": {"env_text": conf.env_text.replace('"\n', '"  \n')},
        "env-reserved": {"env_text": conf.env_text + 'PATH="/tmp"\n'},
        "workers": {"config": {**conf.config, "workers": 3}},
        "user": {"config": {**conf.config, "user": "root"}},
        "digest": {"config": {**conf.config, "env_digest": "0" * 64}},
        "build": {"build_id": "20261130T090000-aaaaaaaaaa"},
        "other-root": {
            "config": a_release(SERVICE, "/srv/shop", env=ENV, build_id=BUILD, user=USER).config
        },
    }[what]


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize(
    ("what", "says"),
    [
        pytest.param("env-value", "release: got ", id="env-value"),
        pytest.param("env-added", "release: got ", id="env-added"),
        pytest.param("env-not-canonical", "env_file: got text that is not", id="env-form"),
        pytest.param("env-reserved", "flipback_services (shop).env.PATH", id="env-reserved"),
        pytest.param("workers", "release: got ", id="workers"),
        pytest.param("user", "release: got ", id="user"),
        pytest.param("digest", "release: got ", id="config-digest"),
        pytest.param("build", "release: got ", id="build"),
        pytest.param("other-root", "release: got ", id="other-root"),
    ],
)
def test_a_config_the_release_id_does_not_stand_for_is_refused_before_any_write(
    root, artifact, tmp_path, what, says, check_mode
):
    runner = StageRunner()
    spec = make_spec(root, artifact, tmp_path, **tampered(root, what))

    with pytest.raises(ConfigInvalid) as failed:
        Stager(spec, run=runner).stage(check_mode)

    error = failed.value
    assert error.retryable is False
    [problem] = error.details["problems"]
    assert problem.startswith(says)
    assert SECRET not in error.msg
    assert not root.exists()
    assert not (tmp_path / "systemd").exists()
    assert artifact.exists()
    assert runner.calls == []


def test_a_staged_release_is_checked_again_and_left_alone(root, artifact, tmp_path, lchown_calls):
    Stager(make_spec(root, artifact, tmp_path), run=StageRunner()).stage(check_mode=False)
    env_file = release(root, ".flipback", "env")
    before = env_file.read_text()
    runner = StageRunner()
    spec = make_spec(root, artifact, tmp_path, **tampered(root, "env-value"))

    with pytest.raises(ConfigInvalid):
        Stager(spec, run=runner).stage(check_mode=False)

    assert env_file.read_text() == before
    assert runner.calls == []


def test_a_unit_that_cannot_be_written_is_retryable(root, rid, artifact, tmp_path, lchown_calls):
    (tmp_path / "systemd").write_text("a file where the unit directory should be")

    with pytest.raises(ReleaseError) as failed:
        Stager(make_spec(root, artifact, tmp_path), run=StageRunner()).stage(check_mode=False)

    assert failed.value.retryable is True
    assert failed.value.msg.startswith(f"staging {rid} failed: ")
    assert read_manifest(str(root), rid)["status"] == "staging"
    assert artifact.exists()


def test_a_user_the_host_lacks_fails_as_a_release_error(
    root, artifact, tmp_path, lchown_calls, monkeypatch
):
    def no_such_user(name):
        raise KeyError(name)

    monkeypatch.setattr(pwd, "getpwnam", no_such_user)

    with pytest.raises(ReleaseError):
        Stager(make_spec(root, artifact, tmp_path), run=StageRunner()).stage(check_mode=False)


# --------------------------------------------------------------------------- artifacts


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("info", "says"),
    [
        pytest.param(member("/etc/passwd"), "would be written outside", id="absolute"),
        pytest.param(member("src/../../etc/passwd"), "would be written outside", id="dotdot"),
        pytest.param(member("../wheels/x.whl"), "would be written outside", id="leading-dotdot"),
        pytest.param(member("src/..", tarfile.DIRTYPE), "would be written outside", id="dir"),
        pytest.param(
            member("src/link", tarfile.SYMTYPE, "/etc/passwd"), "is not a plain file", id="symlink"
        ),
        pytest.param(
            member("src/hard", tarfile.LNKTYPE, "flipback.json"),
            "is not a plain file",
            id="hardlink",
        ),
        pytest.param(member("src/tty", tarfile.CHRTYPE), "is not a plain file", id="char-device"),
        pytest.param(member("src/disk", tarfile.BLKTYPE), "is not a plain file", id="block-device"),
        pytest.param(member("src/fifo", tarfile.FIFOTYPE), "is not a plain file", id="fifo"),
        pytest.param(
            member("other/link", tarfile.SYMTYPE, "/"),
            "is not a plain file",
            id="symlink-elsewhere",
        ),
    ],
)
def test_safe_members_rejects(tmp_path, info, says):
    artifact = raw_artifact(tmp_path, info)

    with tarfile.open(artifact) as tar, pytest.raises(ReleaseError) as error:
        safe_members(tar)

    assert f"member {info.name!r} {says}" in error.value.msg
    assert error.value.details["field"] == "artifact"


def test_safe_members_keeps_src_wheels_project_and_metadata(tmp_path):
    artifact = tmp_path / "a.tar"
    with tarfile.open(artifact, "w") as tar:
        for name in (
            "flipback.json",
            "src/app.py",
            "wheels/x.whl",
            "project/shop-1.0-py3-none-any.whl",
            "README",
            "other/x",
        ):
            tar.addfile(tarfile.TarInfo(name), io.BytesIO(b""))

    with tarfile.open(artifact) as tar:
        names = [m.name for m in safe_members(tar)]

    assert names == [
        "flipback.json",
        "src/app.py",
        "wheels/x.whl",
        "project/shop-1.0-py3-none-any.whl",
    ]


def test_hostile_artifact_is_refused_while_staging(root, rid, tmp_path):
    artifact = raw_artifact(tmp_path, member("src/link", tarfile.SYMTYPE, "/etc/shadow"))
    runner = StageRunner()

    with pytest.raises(ReleaseError) as info:
        Stager(make_spec(root, artifact, tmp_path), run=runner).stage(check_mode=False)

    assert "member 'src/link' is not a plain file or directory" in info.value.msg
    assert not release(root, "link").exists()
    assert not release(root, "link").is_symlink()
    assert read_manifest(str(root), rid)["status"] == "staging"
    assert runner.calls == []


# --------------------------------------------------------------------------- venv reuse

KEY = "0123456789abcdef"


def donor_venv(venv: Path) -> None:
    """A virtualenv as `python -m venv` and pip leave it, naming its own path."""
    (venv / "bin").mkdir(parents=True)
    site = venv / "lib" / "python3.11" / "site-packages" / "fastapi"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("version = '0.165.0'\n")
    (venv / "pyvenv.cfg").write_text(
        f"home = /usr/bin\ncommand = /usr/bin/python3 -m venv {venv}\n"
    )
    (venv / "bin" / "uvicorn").write_text(f"#!{venv}/bin/python\nimport uvicorn\n")
    (venv / "bin" / "uvicorn").chmod(0o755)
    (venv / "bin" / "activate").write_text(f'VIRTUAL_ENV="{venv}"\n')
    (venv / "bin" / "plain").write_text("#!/bin/sh\necho no path here\n")
    (venv / "bin" / "pip").write_text(f"#!{venv}/bin/python\nimport pip\n")
    (venv / "bin" / "python").symlink_to("/usr/bin/python3")
    (venv / "lib64").symlink_to("lib")


def files(venv: Path) -> dict[str, bytes | str]:
    """Every entry under venv: link target for symlinks, content for files."""
    found: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(venv):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(venv))
            if path.is_symlink():
                found[rel] = f"-> {os.readlink(path)}"
            elif path.is_file():
                found[rel] = path.read_bytes()
    return found


def test_link_venv_shares_files_and_rewrites_what_names_the_path(tmp_path):
    donor = tmp_path / "releases" / OLD / "venv"
    dest = tmp_path / "releases" / NEW / "venv"
    donor_venv(donor)
    before = files(donor)
    dest.parent.mkdir(parents=True)

    link_venv(str(donor), str(dest))

    # The donor is untouched: same names, same bytes.
    assert files(donor) == before
    shared = "lib/python3.11/site-packages/fastapi/__init__.py"
    assert (dest / shared).stat().st_ino == (donor / shared).stat().st_ino
    assert (dest / "bin" / "plain").stat().st_ino == (donor / "bin" / "plain").stat().st_ino
    for rewritten in ("bin/uvicorn", "bin/activate", "pyvenv.cfg"):
        assert (dest / rewritten).stat().st_ino != (donor / rewritten).stat().st_ino
        assert str(donor) not in (dest / rewritten).read_text()
        assert str(dest) in (dest / rewritten).read_text()
    assert (dest / "bin" / "uvicorn").read_text() == f"#!{dest}/bin/python\nimport uvicorn\n"
    assert stat_mode(dest / "bin" / "uvicorn") == 0o755
    # Symlinks are copied as symlinks, never followed.
    assert os.readlink(dest / "bin" / "python") == "/usr/bin/python3"
    assert os.readlink(dest / "lib64") == "lib"
    assert sorted(files(dest)) == sorted(before)
    assert not list(dest.rglob("*.tmp"))


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def staged_elsewhere(root: Path, release_id: str, *, key: str, status: str = "staged") -> Path:
    path = root / "releases" / release_id
    donor_venv(path / "venv")
    manifest = {"id": release_id, "service": SERVICE, "status": status, "deps_key": key}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_a_release_with_the_same_deps_key_lends_its_venv(
    root, rid, artifact, tmp_path, lchown_calls
):
    donor = staged_elsewhere(root, OLD, key=KEY)
    before = files(donor / "venv")
    runner = StageRunner()

    result = Stager(make_spec(root, artifact, tmp_path, deps_key=KEY), run=runner).stage(False)

    assert result["venv_from"] == OLD
    path = release(root)
    # Only the release's own source is compiled; no venv, no pip.
    assert runner.calls == [
        [f"{path}/venv/bin/python", "-m", "compileall", "-q", "-j", "0", "-x", "/venv/", str(path)],
        ["systemctl", "daemon-reload"],
    ]
    assert (path / "venv" / "pyvenv.cfg").read_text().endswith(f"{path / 'venv'}\n")
    assert files(donor / "venv") == before
    manifest = read_manifest(str(root), rid)
    assert (manifest["status"], manifest["deps_key"]) == ("staged", KEY)


@pytest.mark.parametrize(
    ("key", "status", "pyvenv"),
    [
        pytest.param("ffffffffffffffff", "staged", True, id="other-key"),
        pytest.param(KEY, "staging", True, id="donor-incomplete"),
        pytest.param(KEY, "staged", False, id="donor-without-venv"),
    ],
)
def test_no_donor_builds_the_venv(root, artifact, tmp_path, lchown_calls, key, status, pyvenv):
    donor = staged_elsewhere(root, OLD, key=key, status=status)
    if not pyvenv:
        (donor / "venv" / "pyvenv.cfg").unlink()
    runner = StageRunner()

    result = Stager(make_spec(root, artifact, tmp_path, deps_key=KEY), run=runner).stage(False)

    assert result["venv_from"] is None
    assert runner.steps == ["venv", "pip", "compileall", "daemon-reload"]
    assert "-x" not in runner.calls[-1]


def test_without_a_deps_key_no_venv_is_borrowed(root, rid, artifact, tmp_path, lchown_calls):
    staged_elsewhere(root, OLD, key="")
    runner = StageRunner()

    result = Stager(make_spec(root, artifact, tmp_path), run=runner).stage(False)

    assert result["venv_from"] is None
    assert runner.steps == ["venv", "pip", "compileall", "daemon-reload"]
    assert read_manifest(str(root), rid)["deps_key"] is None


def test_the_current_release_is_the_preferred_donor(root, artifact, tmp_path, lchown_calls):
    older = "20261127T120000-9999999999"
    staged_elsewhere(root, older, key=KEY)
    staged_elsewhere(root, OLD, key=KEY)
    ReleaseTree(root, SERVICE).current(OLD)

    result = Stager(make_spec(root, artifact, tmp_path, deps_key=KEY), run=StageRunner()).stage(
        False
    )

    assert result["venv_from"] == OLD


def test_a_code_only_artifact_stages_with_a_donor(root, rid, tmp_path, lchown_calls):
    staged_elsewhere(root, OLD, key=KEY)
    artifact = build_artifact(tmp_path, code_only=True)
    runner = StageRunner()

    result = Stager(make_spec(root, artifact, tmp_path, deps_key=KEY), run=runner).stage(False)

    assert (result["changed"], result["venv_from"]) == (True, OLD)
    assert runner.steps == ["compileall", "daemon-reload"]
    path = release(root)
    assert (path / "app.py").read_bytes() == b"app = object()\n"
    assert (path / "venv" / "pyvenv.cfg").is_file()
    assert not (path / ".wheels").exists()
    assert read_manifest(str(root), rid)["status"] == "staged"
    assert not artifact.exists()


def test_a_code_only_artifact_without_a_donor_asks_for_the_full_one(
    root, rid, tmp_path, lchown_calls
):
    staged_elsewhere(root, OLD, key="ffffffffffffffff")
    artifact = build_artifact(tmp_path, code_only=True)
    runner = StageRunner()

    with pytest.raises(ReleaseError) as failed:
        Stager(make_spec(root, artifact, tmp_path, deps_key=KEY), run=runner).stage(False)

    error = failed.value
    assert error.msg == (
        f"{rid}: the artifact carries no wheels and no staged release on this host has a "
        "virtualenv with them; expected the full artifact. A re-run uploads it"
    )
    assert error.retryable is True
    # Nothing was built from an empty wheelhouse; the release is never used as it is.
    assert runner.calls == []
    assert read_manifest(str(root), rid)["status"] == "staging"
    assert artifact.exists()


def test_a_code_only_artifact_without_dependencies_needs_no_donor(root, tmp_path, lchown_calls):
    artifact = build_artifact(tmp_path, deps=[], code_only=True)
    runner = StageRunner()

    result = Stager(make_spec(root, artifact, tmp_path, deps_key=KEY), run=runner).stage(False)

    assert (result["changed"], result["venv_from"]) == (True, None)
    assert runner.steps == ["venv", "compileall", "daemon-reload"]


def test_a_borrowed_venv_is_not_walked_again(root, artifact, tmp_path, lchown_calls):
    staged_elsewhere(root, OLD, key=KEY)

    Stager(make_spec(root, artifact, tmp_path, deps_key=KEY), run=StageRunner()).stage(False)

    path = release(root)
    venv = str(path / "venv")
    owned = {p for p, uid, gid in lchown_calls if (uid, gid) == (0, 0)}
    assert not {p for p in owned if p == venv or p.startswith(venv + os.sep)}
    # Everything else in the release still belongs to root (its configuration to
    # root:<service group>).
    on_disk = {str(path)} | {
        os.path.join(d, n)
        for d, dirs, files in os.walk(path)
        for n in dirs + files
        if not os.path.join(d, n).startswith((venv, str(path / ".flipback")))
    }
    assert on_disk <= owned
    assert stat_mode(path / "pkg") == 0o755


def test_a_built_venv_is_still_walked(root, artifact, tmp_path, lchown_calls):
    Stager(make_spec(root, artifact, tmp_path, deps_key=KEY), run=StageRunner()).stage(False)

    python = str(release(root, "venv", "bin", "python"))
    assert python in {p for p, _uid, _gid in lchown_calls}


@pytest.mark.parametrize("umask", [0o077, 0o027], ids=["077", "027"])
def test_a_borrowed_venv_is_readable_whatever_the_umask(
    root, artifact, tmp_path, lchown_calls, umask
):
    staged_elsewhere(root, OLD, key=KEY)
    before = os.umask(umask)
    try:
        Stager(make_spec(root, artifact, tmp_path, deps_key=KEY), run=StageRunner()).stage(False)
    finally:
        os.umask(before)

    venv = release(root, "venv")
    modes = {str(d): stat_mode(Path(d)) for d, _dirs, _files in os.walk(venv)}
    assert set(modes.values()) == {0o755}, modes


# ------------------------------------------------------------------ the project's wheel

PROJECT_WHEEL = "shop-1.0.0-py3-none-any.whl"


def project_wheel(tmp_path: Path, app: str = "v2") -> Path:
    """The shop's own wheel (a src/ layout package), as the build ships it."""
    return make_wheel(
        tmp_path / "project-build", "shop", "1.0.0", {"shop/main.py": f"app = {app!r}\n"}
    )


def make_wheel(directory: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A minimal, valid pure-Python wheel, for a real pip to install."""
    directory.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    entries = {
        **files,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    entries[f"{dist}/RECORD"] = "".join(f"{n},,\n" for n in [*entries, f"{dist}/RECORD"])
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for entry, text in entries.items():
            archive.writestr(entry, text)
    return path


def project_install(path: Path) -> list[str]:
    return [
        f"{path}/venv/bin/python",
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-index",
        "--no-deps",
        "--force-reinstall",
        str(path / ".project" / PROJECT_WHEEL),
    ]


def test_the_project_is_installed_over_a_borrowed_venv(root, rid, tmp_path, lchown_calls):
    staged_elsewhere(root, OLD, key=KEY)
    artifact = build_artifact(tmp_path, code_only=True, project=project_wheel(tmp_path))
    runner = StageRunner()

    result = Stager(make_spec(root, artifact, tmp_path, deps_key=KEY), run=runner).stage(False)

    path = release(root)
    assert result["venv_from"] == OLD
    # Into the release's own (linked) venv, before the code is compiled; the donor's
    # copy of the project is replaced whatever its version.
    assert runner.calls[0] == project_install(path)
    assert runner.steps == ["pip", "compileall", "daemon-reload"]
    assert not (path / ".project").exists()
    assert not (path / "project").exists()


def test_the_project_is_installed_after_the_dependencies(root, rid, tmp_path, lchown_calls):
    artifact = build_artifact(tmp_path, project=project_wheel(tmp_path))
    runner = StageRunner()

    Stager(make_spec(root, artifact, tmp_path, deps_key=KEY), run=runner).stage(False)

    path = release(root)
    assert runner.steps == ["venv", "pip", "pip", "compileall", "daemon-reload"]
    assert runner.calls[1][-2:] == DEPS
    assert runner.calls[2] == project_install(path)
    assert not (path / ".project").exists()


def test_a_release_without_a_project_installs_none(root, rid, artifact, tmp_path, lchown_calls):
    runner = StageRunner()
    Stager(make_spec(root, artifact, tmp_path), run=runner).stage(False)
    assert not [argv for argv in runner.calls if "--force-reinstall" in argv]


@pytest.mark.parametrize(
    ("named", "says"),
    [
        pytest.param("other-1.0-py3-none-any.whl", "does not carry it", id="not-carried"),
        pytest.param("../../evil.whl", "not a wheel's file name", id="a-path"),
        pytest.param("shop.tar.gz", "not a wheel's file name", id="not-a-wheel"),
    ],
)
def test_a_project_the_artifact_does_not_carry_fails(
    root, rid, tmp_path, lchown_calls, named, says
):
    artifact = tmp_path / "incoming" / f"{BUILD}.tar"
    artifact.parent.mkdir()
    meta = {"service": SERVICE, "id": BUILD, "dependencies": [], "project": named}
    write_artifact(
        str(artifact), source_tar(), [], 1_795_953_600, meta, [str(project_wheel(tmp_path))]
    )
    runner = StageRunner()

    with pytest.raises(ReleaseError) as info:
        Stager(make_spec(root, artifact, tmp_path), run=runner).stage(False)

    assert says in info.value.msg
    assert (info.value.details["field"], info.value.details["value"]) == ("project", named)
    assert info.value.retryable is False
    assert "pip" not in runner.steps
    assert read_manifest(str(root), rid)["status"] == "staging"


def real_runner(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Real python, venv and pip; systemd is not there to be asked."""
    if argv[0] == "systemctl":
        return subprocess.CompletedProcess(list(argv), 0, "", "")
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


def test_a_borrowed_venv_never_runs_the_donors_copy_of_the_project(
    root, rid, tmp_path, lchown_calls
):
    # The donor: a real venv with the project at the same version, older code.
    donor = root / "releases" / OLD
    donor.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "venv", str(donor / "venv")], check=True)
    old_wheel = project_wheel(tmp_path / "old", app="v1")
    install = [str(donor / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*install, "--no-index", str(old_wheel)], check=True)
    manifest = {"id": OLD, "service": SERVICE, "status": "staged", "deps_key": KEY}
    (donor / "manifest.json").write_text(json.dumps(manifest))
    donor_files = files(donor / "venv")
    artifact = build_artifact(tmp_path, code_only=True, project=project_wheel(tmp_path, "v2"))

    result = Stager(make_spec(root, artifact, tmp_path, deps_key=KEY), run=real_runner).stage(False)

    assert result["venv_from"] == OLD
    python = str(release(root, "venv", "bin", "python"))
    ran = subprocess.run(
        [python, "-c", "import shop.main; print(shop.main.app, shop.main.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    app, where = ran.stdout.split()
    assert app == "v2"
    assert where.startswith(str(release(root, "venv")))
    # The donor's venv, shared by hard links, still has (and runs) its own copy.
    assert files(donor / "venv") == donor_files
    ran = subprocess.run(
        [str(donor / "venv" / "bin" / "python"), "-c", "import shop.main; print(shop.main.app)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert ran.stdout.strip() == "v1"


# --------------------------------------------------------------------------- find_donor


def manifest_only(root: Path, release_id: str, text: str) -> None:
    path = root / "releases" / release_id
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(text)


def stray_file(root: Path) -> None:
    (root / "releases").mkdir(parents=True)
    (root / "releases" / "README").write_text("not a release\n")


@pytest.mark.parametrize(
    ("setup", "key", "donor"),
    [
        pytest.param(lambda root: staged_elsewhere(root, OLD, key=KEY), KEY, OLD, id="found"),
        pytest.param(lambda root: staged_elsewhere(root, OLD, key=KEY), "", None, id="no-key"),
        pytest.param(lambda root: None, KEY, None, id="no-releases-dir"),
        pytest.param(lambda root: staged_elsewhere(root, NEW, key=KEY), KEY, None, id="itself"),
        pytest.param(
            lambda root: manifest_only(root, OLD, "{not json"), KEY, None, id="bad-manifest"
        ),
        pytest.param(lambda root: manifest_only(root, OLD, "[]"), KEY, None, id="not-a-dict"),
        pytest.param(stray_file, KEY, None, id="stray-file"),
    ],
)
def test_find_donor(root, setup, key, donor):
    setup(root)
    assert find_donor(str(root), NEW, key) == donor


def test_find_donor_skips_what_it_cannot_read_and_goes_on(root):
    manifest_only(root, "20261127T120000-9999999999", "{not json")
    staged_elsewhere(root, OLD, key=KEY)
    assert find_donor(str(root), NEW, KEY) == OLD


def test_find_donor_prefers_the_current_release(root):
    older = "20261127T120000-9999999999"
    staged_elsewhere(root, older, key=KEY)
    staged_elsewhere(root, OLD, key=KEY)
    ReleaseTree(root, SERVICE).current(older)
    assert find_donor(str(root), NEW, KEY) == older


# --------------------------------------------------------------------------- warm up


@pytest.mark.parametrize(("rc", "warmed"), [(0, True), (1, False)], ids=["started", "refused"])
def test_warm_up_starts_the_instance_without_waiting(root, rid, artifact, tmp_path, rc, warmed):
    calls = []

    def run(argv):
        calls.append(list(argv))
        return subprocess.CompletedProcess(argv, rc, "", "")

    assert Stager(make_spec(root, artifact, tmp_path), run=run).warm_up() is warmed
    assert calls == [["systemctl", "start", "--no-block", f"{SERVICE}@{rid}.service"]]


def static_spec(root: Path, artifact: Path, tmp_path: Path) -> StageSpec:
    """A release whose nginx serves /static/ and /media/ from directories in it."""
    static = {"/static/": "static", "/media/": "var/media"}
    resolved = resolve_release(
        service=SERVICE,
        user=USER,
        app="app:app",
        factory=False,
        workers=2,
        port=8000,
        env=ENV,
        build_id=BUILD,
        home=str(root),
        nginx={**NGINX_DEFAULTS, "static": static},
    )
    return make_spec(
        root,
        artifact,
        tmp_path,
        release=resolved["release"],
        config=resolved["config"],
        env_text=env_file_text(ENV),
    )


def test_the_release_s_static_directories_belong_to_its_user(
    root, tmp_path, lchown_calls, chown_calls
):
    artifact = build_artifact(tmp_path)
    spec = static_spec(root, artifact, tmp_path)

    Stager(spec, run=StageRunner()).stage(check_mode=False)

    account = pwd.getpwnam(USER)
    here = root / "releases" / spec.release
    for directory in ("static", "var/media"):
        assert (here / directory).is_dir()
        assert (str(here / directory), account.pw_uid, account.pw_gid) in chown_calls
    # Only the directories: what is around them stays root's.
    assert (str(here / "var"), account.pw_uid, account.pw_gid) not in chown_calls


def test_a_static_directory_that_is_a_file_in_the_code_is_refused(root, tmp_path, lchown_calls):
    artifact = build_artifact(tmp_path, extra=[("./static", b"not a directory\n")])
    spec = static_spec(root, artifact, tmp_path)

    with pytest.raises(ReleaseError, match=r"nginx\.static: 'static' is a symlink or a file"):
        Stager(spec, run=StageRunner()).stage(check_mode=False)


# --------------------------------------------------------------------------- uv on the host


def test_a_full_artifact_with_uv_makes_the_venv_with_uv(root, rid, tmp_path, lchown_calls):
    artifact = build_artifact(tmp_path, uv=True, project=project_wheel(tmp_path))
    runner = StageRunner()

    Stager(make_spec(root, artifact, tmp_path), run=runner).stage(False)

    path = release(root)
    uv = tmp_path / "tool-cache" / "uv-0.13.9-py3-none-manylinux_2_17_x86_64" / "uv"
    # Taken out of its wheel once, kept for the next releases (root, executable).
    assert uv.read_text() == "#!/bin/sh\necho fake uv\n" and uv.stat().st_mode & 0o777 == 0o755
    venv, deps, project = runner.calls[:3]
    assert venv[:2] == [str(uv), "venv"] and venv[-1] == str(path / "venv")
    assert "--offline" in venv and sys.executable in venv
    assert deps[:3] == [str(uv), "pip", "install"] and deps[-2:] == DEPS
    assert "--no-index" in deps and str(path / ".wheels") in deps
    assert project[:3] == [str(uv), "pip", "install"] and "--reinstall" in project
    assert "--no-deps" in project and project[-1].endswith(".whl")
    assert runner.steps[3:] == ["compileall", "daemon-reload"]
    # The tools leave with the wheels: nothing of uv stays in the release.
    assert not (path / ".tools").exists() and not (path / "tools").exists()


def test_a_cached_uv_is_used_for_a_project_over_a_borrowed_uv_venv(
    root, rid, tmp_path, lchown_calls
):
    # The donor's venv was made by uv (no pip in it); uv is cached from that staging.
    staged_elsewhere(root, OLD, key=KEY)
    (root / "releases" / OLD / "venv" / "bin" / "pip").unlink()
    uv = tmp_path / "tool-cache" / "uv-0.13.9-py3-none-manylinux_2_17_x86_64" / "uv"
    uv.parent.mkdir(parents=True)
    uv.write_text("#!/bin/sh\n")
    uv.chmod(0o755)
    artifact = build_artifact(tmp_path, code_only=True, project=project_wheel(tmp_path))
    runner = StageRunner()

    Stager(make_spec(root, artifact, tmp_path, deps_key=KEY), run=runner).stage(False)

    assert runner.calls[0][:3] == [str(uv), "pip", "install"]
    assert "--reinstall" in runner.calls[0] and "--no-deps" in runner.calls[0]


def test_a_borrowed_uv_venv_without_uv_on_the_host_asks_for_the_full_artifact(
    root, rid, tmp_path, lchown_calls
):
    staged_elsewhere(root, OLD, key=KEY)
    (root / "releases" / OLD / "venv" / "bin" / "pip").unlink()
    artifact = build_artifact(tmp_path, code_only=True, project=project_wheel(tmp_path))

    with pytest.raises(ReleaseError) as info:
        Stager(make_spec(root, artifact, tmp_path, deps_key=KEY), run=StageRunner()).stage(False)

    assert "has no pip, and uv is not on this host" in info.value.msg
    assert info.value.retryable is True


# --------------------------------------------------------------------------- a base venv


def uv_base(root: Path, release_id: str, *, version: str | None = None) -> Path:
    """A staged release with other wheels (key "other") whose venv uv made for this
    interpreter (`version`: another one's)."""
    path = staged_elsewhere(root, release_id, key="other")
    cfg = path / "venv" / "pyvenv.cfg"
    here = ".".join(str(n) for n in sys.version_info[:3])
    cfg.write_text(
        f"home = {os.path.dirname(sys.executable)}\nimplementation = CPython\nuv = 0.13.9\n"
        f"version_info = {version or here}\ninclude-system-site-packages = false\n"
    )
    return path


def set_status(root: Path, release_id: str, status: str) -> None:
    manifest = root / "releases" / release_id / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "status": status}))


def test_a_venv_with_other_wheels_starts_from_a_staged_uv_venv(root, rid, tmp_path, lchown_calls):
    base = uv_base(root, OLD)
    before = files(base / "venv")
    artifact = build_artifact(tmp_path, uv=True)
    runner = StageRunner()

    result = Stager(make_spec(root, artifact, tmp_path, deps_key=KEY), run=runner).stage(False)

    path = release(root)
    assert (result["venv_base"], result["venv_from"], result["venv_tool"]) == (OLD, None, "uv")
    compile_, sync = runner.calls[:2]
    uv = str(tmp_path / "tool-cache" / "uv-0.13.9-py3-none-manylinux_2_17_x86_64" / "uv")
    wheels = str(path / ".wheels")
    assert compile_[:3] == [uv, "pip", "compile"] and compile_[-1] == f"{wheels}/requested.txt"
    assert sync[:3] == [uv, "pip", "sync"] and sync[-1] == f"{wheels}/resolved.txt"
    for argv in (compile_, sync):
        assert {"--offline", "--no-index", wheels, f"{path}/venv/bin/python"} <= set(argv)
    # The whole venv is compiled: what the base had is up to date, and skipped.
    assert runner.calls[2] == [
        f"{path}/venv/bin/python",
        "-m",
        "compileall",
        "-q",
        "-j",
        "0",
        str(path),
    ]
    assert runner.steps[3:] == ["daemon-reload"]
    # The base's files are shared, never changed; the copy names its own path.
    assert files(base / "venv") == before
    assert (path / "venv" / "lib").is_dir() and not (path / ".wheels").exists()
    assert f"{path / 'venv'}" not in (base / "venv" / "bin" / "uvicorn").read_text()


@pytest.mark.parametrize(
    ("make_base", "fail"),
    [
        pytest.param(lambda root: uv_base(root, OLD), "sync", id="sync-fails"),
        pytest.param(lambda root: uv_base(root, OLD), "compile", id="compile-fails"),
        pytest.param(lambda root: uv_base(root, OLD, version="3.10.1"), "", id="other-python"),
        pytest.param(lambda root: staged_elsewhere(root, OLD, key="other"), "", id="pip-venv"),
        pytest.param(
            lambda root: (uv_base(root, OLD), set_status(root, OLD, "staging")), "", id="incomplete"
        ),
    ],
)
def test_without_a_base_that_fits_the_venv_is_made_from_nothing(
    root, rid, tmp_path, lchown_calls, make_base, fail
):
    make_base(root)
    artifact = build_artifact(tmp_path, uv=True)
    runner = StageRunner(fail=fail)

    result = Stager(make_spec(root, artifact, tmp_path, deps_key=KEY), run=runner).stage(False)

    assert (result["venv_base"], result["venv_tool"]) == (None, "uv")
    if fail:
        # Tried from the base first; what it left was removed before the fresh venv.
        assert ["pip", fail] in [argv[1:3] for argv in runner.calls]
    made = [argv[1:3] for argv in runner.calls if argv[1:2] in (["venv"], ["pip"])]
    assert made[-2:] == [["venv", "--quiet"], ["pip", "install"]]
