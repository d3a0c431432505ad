"""Unit tests of library/release.py, action=prepare: parameters to PrepareSpec, main()'s
results.

main() prepares real files under tmp_path; systemctl, nginx and the probe go through a
fake runner, and the deploy lock and the nginx site directory live under tmp_path, by
replacing the module's Prepare with a factory. The host's accounts are
test_flipback_prepare.Accounts: the service user `shop` as flipback creates it. The
module takes no site and returns no diff: the site is the switch's. Configurations are
made with test_flipback_runtime.a_release.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import release
import yaml
from ansible.module_utils import flipback_actions as actions
from ansible.module_utils.flipback_lock import ServiceLock
from ansible.module_utils.flipback_prepare import Prepare, PrepareSpec
from ansible.module_utils.flipback_release import utc_iso
from ansible.module_utils.flipback_runtime import site_text
from fakes import FakeSystemd, ReleaseTree, module_params, run_arg, run_module, service_arg
from test_flipback_prepare import Accounts
from test_flipback_runtime import a_release

# Files are handed to root and to the service user (see test_flipback_prepare).
pytestmark = pytest.mark.usefixtures("ownership")

SERVICE = "shop"
USER = "shop"
B = "20261102T120000-bbbbbbbbbb"
SECRET = "s3cret-value-never-shown"
OLD_SECRET = "old-s3cret-value-never-shown"
OWNER = {"run_id": "ctl:4242:1795953600", "by": "bob"}
BUILD = {"id": "20261102T115900-bbbbbbbbbb", "checksum": "0" * 64}


class Host(FakeSystemd):
    """Fake systemctl (fakes.FakeSystemd): `active` holds the instances systemd lists as
    running; every unit is enabled."""

    description = ""

    def __init__(self) -> None:
        super().__init__()
        self.specs: list[PrepareSpec] = []

    other_commands_succeed = True

    def run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        # The site is the switch's: prepare neither tests nor reloads nginx.
        assert "nginx" not in argv, argv
        return super().run(argv)

    def is_enabled(self, argv: list[str], units: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 0, "enabled\n" * len(units), "")

    def start(self, argv: list[str], units: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 0, "", "")

    def prober(self, *_args: object) -> dict:
        return {"ok": True}


@pytest.fixture
def accounts(monkeypatch, tmp_path) -> Accounts:
    return Accounts.made_by_flipback(tmp_path / "srv" / SERVICE, USER).install(monkeypatch)


@pytest.fixture
def host(monkeypatch, tmp_path, accounts) -> Host:
    fake = Host()

    def factory(spec: PrepareSpec) -> Prepare:
        fake.specs.append(spec)
        # The module never names a site dir: the default is /etc/nginx/conf.d.
        assert spec.site_dir == "/etc/nginx/conf.d"
        spec.site_dir = str(tmp_path / "nginx")
        lock = ServiceLock(spec.service, str(tmp_path / "lock" / spec.service))
        return Prepare(spec, run=fake.run, prober=fake.prober, lock=lock)

    monkeypatch.setattr(actions, "Prepare", factory)
    return fake


def configured(tmp_path: Path, secret: str = SECRET, **changes: object):
    root = str(tmp_path / "srv" / SERVICE)
    return a_release(SERVICE, root, env={"SHOP_TOKEN": secret}, user=USER, **changes)


def args(
    tmp_path: Path,
    *,
    service: dict | None = None,
    run: dict | None = None,
    build: dict | None = None,
    **extra: object,
) -> dict:
    """action=prepare of release B for shop at tmp_path/srv/shop; `service`, `run` and
    `build` change those arguments' keys."""
    conf = configured(tmp_path)
    return {
        "action": "prepare",
        "service": service_arg(SERVICE, **{"user": USER, **(service or {})}),
        "run": run_arg(tmp_path / "srv" / SERVICE, **(run or {})),
        "release": B,
        "config": conf.config,
        "env_file": conf.env_text,
        "build": {**BUILD, **(build or {})},
        **extra,
    }


def run_main(module_args: dict, capsys, check_mode: bool = False, diff: bool = False):
    return run_module(release, module_args, capsys, check_mode=check_mode, diff=diff)


# --------------------------------------------------------------------------- parameters


def test_spec_from_the_parameters(capsys):
    params = module_params(
        release,
        {
            "action": "prepare",
            "service": {
                "name": SERVICE,
                "user": "shop",
                "adopt_user": True,
                "port": 8000,
                "health": {
                    "path": "/healthz",
                    "expect_status": [200, 204],
                    "expect_json": {"ok": True},
                    "release_in": "json",
                    "host": "shop.example",
                },
            },
            "run": {
                "run_id": "r1",
                "by": "bob",
                "lock_wait": 5.0,
                "lock_stale_after": 60,
                "live_runs": {"controller": "ctl", "pids": [1], "at": 2.0},
                "public_successes": 5,
                "standby": False,
            },
            "release": B,
            "config": {"workers": 2},
            "env_file": 'A="1"\n',
            "build": {**BUILD, "deps_key": "0123456789abcdef"},
        },
        capsys,
    )

    spec = actions.prepare_spec(actions.Request(params))

    assert spec == PrepareSpec(
        service=SERVICE,
        root="/srv/shop",
        user="shop",
        adopt_user=True,
        release=B,
        lock={
            # Fields left out by the playbook are not passed on as None; the owner's
            # action and release are the call's.
            "owner": {"run_id": "r1", "by": "bob", "action": "deploy", "release": B},
            "wait": 5.0,
            "stale_after": 60,
            "live_runs": {"controller": "ctl", "pids": [1], "at": 2.0},
        },
        port=8000,
        health_path="/healthz",
        expect_status=(200, 204),
        expect_json={"ok": True},
        release_in="json",
        health_host="shop.example",
        public_successes=5,
        standby=False,
        deps_key="0123456789abcdef",
        config={"workers": 2},
        env_text='A="1"\n',
    )
    assert spec.site_dir == "/etc/nginx/conf.d"


def test_lock_hold_is_the_lock_s_stale_time(capsys):
    params = module_params(
        release,
        {
            "action": "prepare",
            "service": service_arg(SERVICE),
            "run": {"run_id": "r1", "playbook": "deploy.yml", "lock_stale_after": 60},
            "release": B,
            "config": {"user": "shop-app"},
            "build": BUILD,
            "lock_hold": 1800,
        },
        capsys,
    )

    spec = actions.prepare_spec(actions.Request(params))

    assert spec.lock == {
        "owner": {
            "run_id": "r1",
            "by": "unknown",
            "playbook": "deploy.yml",
            "action": "deploy",
            "release": B,
        },
        "wait": 0.0,
        "stale_after": 1800,
        "live_runs": None,
    }
    # The user the configuration names comes first; then the service's; then its name.
    assert spec.user == "shop-app"


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"site_path": "/etc/nginx/conf.d/flipback-shop.conf"}, id="site-path"),
        pytest.param({"site_content": "server {}\n"}, id="site-content"),
    ],
)
def test_the_site_is_no_parameter_any_more(host, tmp_path, capsys, extra):
    code, result, _out = run_main(args(tmp_path, **extra), capsys)

    assert code == 1
    assert "Unsupported parameters" in result["msg"]
    assert next(iter(extra)) in result["msg"]
    assert host.specs == []


def test_adopt_user_is_documented():
    options = yaml.safe_load(release.DOCUMENTATION)["options"]
    adopt_user = options["service"]["suboptions"]["adopt_user"]

    assert (adopt_user["type"], adopt_user["default"]) == ("bool", False)
    assert "primary group its own" in adopt_user["description"]


def test_the_site_is_no_option_in_the_docs():
    options = yaml.safe_load(release.DOCUMENTATION)["options"]
    returned = yaml.safe_load(release.RETURN)

    assert not {"site_path", "site_content"} & set(options)
    assert not {"site_path", "site_content"} & set(options["service"]["suboptions"])
    assert "prepare" not in returned["diff"]["returned"]
    assert "site_path" not in release.EXAMPLES


def test_no_run_id_no_lock(host, tmp_path, capsys):
    code, result, _out = run_main(args(tmp_path), capsys)
    assert code == 0
    (spec,) = host.specs
    assert spec.lock is None
    assert result["lock"] is None


def test_defaults(host, tmp_path, capsys):
    module_args = args(tmp_path)
    del module_args["run"]
    run_main(module_args, capsys, check_mode=True)
    (spec,) = host.specs
    assert spec.root == f"/srv/{SERVICE}"
    assert (spec.health_path, spec.expect_status, spec.expect_json) == ("/health", (200,), {})
    assert (spec.public_successes, spec.standby, spec.deps_key) == (3, True, "")
    assert spec.adopt_user is False
    assert (spec.config, spec.env_text) == (module_args["config"], module_args["env_file"])


def test_env_file_is_optional(host, tmp_path, capsys):
    module_args = args(tmp_path)
    del module_args["env_file"]

    code, result, _out = run_main(module_args, capsys, check_mode=True)

    assert code == 0
    (spec,) = host.specs
    assert (spec.config, spec.env_text) == (module_args["config"], "")
    assert result["config_changes"] == []


@pytest.mark.parametrize(
    ("drop", "message", "field"),
    [
        pytest.param("config", "config: missing; action=prepare needs it", "config", id="config"),
        pytest.param("build", "build: missing; action=prepare needs it", "build", id="build"),
        pytest.param(
            "port", "service.port: missing; action=prepare needs it", "service.port", id="port"
        ),
    ],
)
def test_required_arguments(host, tmp_path, capsys, drop, message, field):
    module_args = args(tmp_path)
    if drop == "port":
        module_args["service"] = service_arg(SERVICE, user=USER, port=None)
    else:
        del module_args[drop]
    code, result, _out = run_main(module_args, capsys)
    assert code == 1
    assert result["msg"].startswith(message)
    assert (result["field"], result["retryable"]) == (field, False)
    assert host.specs == []


def test_the_user_defaults_to_the_service_name(host, tmp_path, capsys):
    module_args = args(tmp_path, service={"user": None})
    module_args["config"] = {k: v for k, v in module_args["config"].items() if k != "user"}

    run_main(module_args, capsys, check_mode=True)

    (spec,) = host.specs
    assert spec.user == SERVICE


def test_a_run_without_run_id_takes_no_lock(host, tmp_path, capsys):
    code, result, _out = run_main(args(tmp_path, run={"by": "bob"}), capsys)
    assert code == 0
    (spec,) = host.specs
    assert spec.lock is None
    assert result["lock"] is None


# --------------------------------------------------------------------------- results


@pytest.mark.parametrize("diff", [False, True], ids=["no-diff", "diff"])
@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_env_file_is_never_in_the_result(host, tmp_path, capsys, diff, check_mode):
    code, result, out = run_main(
        args(tmp_path, run=OWNER), capsys, check_mode=check_mode, diff=diff
    )

    assert code == 0
    assert SECRET not in out
    assert result["changed"] is True
    assert isinstance(result["elapsed"], float)
    assert "warnings" not in result
    # No site, so nothing to show as a diff, in diff mode or not.
    assert "diff" not in result
    assert not (tmp_path / "nginx").exists()
    assert (result["current"], result["staged"], result["noop"]) == (None, False, False)
    assert result["lock"]["outcome"] == "acquired"


ANSIBLE_KEYS = {"changed", "failed", "msg", "invocation", "warnings", "deprecations"}
# Returned by prepare but missing from release.py's RETURN (see test_changes_is_documented).
UNDOCUMENTED = {"changes"}


def test_changes_is_documented(host, tmp_path, capsys):
    code, result, _out = run_main(args(tmp_path), capsys)

    assert code == 0
    assert "changes" in result
    assert "changes" in yaml.safe_load(release.RETURN)


@pytest.mark.parametrize("diff", [False, True], ids=["no-diff", "diff"])
@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize("owner", [None, OWNER], ids=["no-lock", "lock"])
def test_every_key_returned_is_documented(host, tmp_path, capsys, diff, check_mode, owner):
    documented = yaml.safe_load(release.RETURN)
    extra = {"run": owner} if owner else {}

    code, result, _out = run_main(args(tmp_path, **extra), capsys, check_mode=check_mode, diff=diff)

    assert code == 0
    assert set(result) - ANSIBLE_KEYS - UNDOCUMENTED <= set(documented)
    assert "diff" not in result
    assert {"release", "config_changes", "venv_donor", "warmed"} <= set(result)
    assert result["release"] == B
    assert result["config_changes"] == []
    assert (result["venv_donor"], result["warmed"]) == (None, False)


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_every_key_of_a_staged_release_is_documented(host, tmp_path, capsys, check_mode):
    # The other branch: staged, not current, so the call warms it (outside check mode).
    documented = yaml.safe_load(release.RETURN)
    stage(tmp_path, B, "")

    code, result, _out = run_main(args(tmp_path), capsys, check_mode=check_mode)

    assert code == 0
    assert set(result) - ANSIBLE_KEYS - UNDOCUMENTED <= set(documented)
    assert (result["staged"], result["venv_donor"]) == (True, None)
    assert result["warmed"] is not check_mode


# --------------------------------------------------------------------------- roll forward

KEY = "0123456789abcdef"
DONOR = "20261101T120000-aaaaaaaaaa"


def stage(tmp_path: Path, release_id: str, key: str, conf=None) -> None:
    """A release staged on the host, with a virtualenv another release may borrow, and
    with its configuration if `conf` (a_release) is given."""
    tree = ReleaseTree(tmp_path / "srv" / SERVICE, SERVICE).venv(release_id)
    manifest: dict = {"deps_key": key}
    if conf is not None:
        manifest["config"] = conf.config
        tree.env_file(release_id, conf.env_text)
    tree.release(release_id, **manifest)


def go_live(tmp_path: Path, release_id: str) -> None:
    ReleaseTree(tmp_path / "srv" / SERVICE, SERVICE).current(release_id)


@pytest.mark.parametrize("diff", [False, True], ids=["no-diff", "diff"])
@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_config_changes_against_the_live_release(host, tmp_path, capsys, diff, check_mode):
    stage(tmp_path, DONOR, KEY, configured(tmp_path, OLD_SECRET))
    go_live(tmp_path, DONOR)
    new = configured(tmp_path, SECRET, workers=2)
    module_args = args(tmp_path, config=new.config, env_file=new.env_text)

    code, result, out = run_main(module_args, capsys, check_mode=check_mode, diff=diff)

    assert code == 0
    assert result["config_changes"] == ["workers 1 -> 2", "SHOP_TOKEN"]
    # The configuration's diff is release_stage's; prepare shows none.
    assert "diff" not in result
    assert SECRET not in out
    assert OLD_SECRET not in out


@pytest.mark.parametrize(
    ("deps_key", "donor_key", "donor"),
    [
        pytest.param(KEY, KEY, DONOR, id="same-wheels"),
        pytest.param(KEY, "ffffffffffffffff", None, id="other-wheels"),
        pytest.param("", KEY, None, id="no-key"),
    ],
)
def test_deps_key_finds_the_venv_donor(host, tmp_path, capsys, deps_key, donor_key, donor):
    stage(tmp_path, DONOR, donor_key)

    code, result, _out = run_main(args(tmp_path, build={"deps_key": deps_key}), capsys)

    assert code == 0
    (spec,) = host.specs
    assert spec.deps_key == deps_key
    assert (result["staged"], result["venv_donor"]) == (False, donor)
    assert result["warmed"] is False
    assert not [c for c in host.calls if c[:2] == ["systemctl", "start"]]


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_a_staged_release_is_warmed(host, tmp_path, capsys, check_mode):
    stage(tmp_path, DONOR, KEY)
    stage(tmp_path, B, KEY)

    code, result, _out = run_main(
        args(tmp_path, build={"deps_key": KEY}), capsys, check_mode=check_mode
    )

    assert code == 0
    # Already staged: nothing to borrow, whoever has the same wheels.
    assert (result["staged"], result["venv_donor"]) == (True, None)
    starts = [c for c in host.calls if c[:2] == ["systemctl", "start"]]
    if check_mode:
        assert (result["warmed"], starts) == (False, [])
    else:
        assert result["warmed"] is True
        assert starts == [["systemctl", "start", "--no-block", f"{SERVICE}@{B}.service"]]


def test_a_failure_fails_with_the_details(host, tmp_path, capsys):
    code, result, out = run_main(args(tmp_path, release="../../etc"), capsys)

    assert code == 1
    assert result["msg"].startswith("release: got '../../etc'")
    assert (result["retryable"], result["field"]) == (False, "release")
    assert isinstance(result["elapsed"], float)
    assert SECRET not in out
    assert host.calls == []


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize(
    ("adopt_user", "group", "code"),
    [
        pytest.param(False, USER, 1, id="not-adopted"),
        pytest.param(True, USER, 0, id="adopted-own-group"),
        pytest.param("yes", USER, 0, id="adopted-as-text"),
        pytest.param(True, "nogroup", 1, id="adopt-nogroup"),
    ],
)
def test_an_existing_account_flipback_did_not_create(
    host, accounts, tmp_path, capsys, check_mode, adopt_user, group, code
):
    accounts.users.clear()
    accounts.add_user(USER, f"/home/{USER}", accounts.add_group(group, 64150))

    code_, result, out = run_main(
        args(tmp_path, service={"adopt_user": adopt_user}, run=OWNER),
        capsys,
        check_mode=check_mode,
    )

    assert code_ == code
    (spec,) = host.specs
    # Ansible's bool: "yes" is true.
    assert spec.adopt_user is (adopt_user is not False)
    if code == 0:
        assert f"user {USER}" not in result["changes"]
        return
    assert (result["field"], result["value"], result["retryable"]) == ("user", USER, False)
    assert f"home /home/{USER} and primary group {group} (gid 64150)" in result["msg"]
    assert "adopt_user" in result["msg"]
    assert SECRET not in out
    assert [c for c in host.calls if c[0] == "useradd"] == []
    assert not (tmp_path / "srv").exists()


@pytest.mark.parametrize("diff", [False, True], ids=["no-diff", "diff"])
@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize(
    ("site_port", "noop"),
    [
        pytest.param(8000, True, id="the-release-s-site"),
        pytest.param(8001, False, id="another-port"),
        pytest.param(None, False, id="missing"),
    ],
)
def test_noop_of_the_live_release_needs_its_site(
    host, tmp_path, capsys, diff, check_mode, site_port, noop
):
    live = configured(tmp_path)
    stage(tmp_path, B, KEY, live)
    go_live(tmp_path, B)
    run_main(args(tmp_path), capsys)  # the user's directories, made by an earlier deploy
    site = tmp_path / "nginx" / f"flipback-{SERVICE}.conf"
    if site_port is not None:
        site.parent.mkdir()
        site.write_text(
            site_text(service=SERVICE, home=str(tmp_path / "srv" / SERVICE), port=site_port)
        )
    before = site.read_bytes() if site.exists() else None
    host.active = {f"{SERVICE}@{B}.service"}

    code, result, _out = run_main(args(tmp_path), capsys, check_mode=check_mode, diff=diff)

    assert code == 0
    assert result["noop"] is noop
    assert result["changed"] is False
    assert "diff" not in result
    assert (site.read_bytes() if site.exists() else None) == before


def test_a_lock_taken_over_is_a_warning(host, tmp_path, capsys):
    lock = tmp_path / "lock" / SERVICE
    lock.mkdir(parents=True)
    since = time.time() - 10
    holder = {
        "service": SERVICE,
        "run_id": "ctl:777:1700000000",
        "by": "alice",
        "since": utc_iso(since),
        "ttl": 1800,
        "expires": since + 1800,
        "refreshed": since,
        "stale_after": 120,
    }
    (lock / ".lock").write_text(json.dumps(holder))
    live_runs = {"controller": "ctl", "pids": [4242], "at": time.time()}

    code, result, _out = run_main(args(tmp_path, run={**OWNER, "live_runs": live_runs}), capsys)

    assert code == 0
    assert result["lock"]["outcome"] == "took_over"
    [warning] = result["warnings"]
    assert "its ansible-playbook process no longer exists" in json.dumps(warning)


# --------------------------------------------------------------------------- code sent ahead


@pytest.mark.parametrize(
    ("donor_key", "staged_before", "ahead", "stages"),
    [
        pytest.param(KEY, False, True, True, id="donor-and-code"),
        pytest.param(KEY, False, False, False, id="donor-no-code"),
        pytest.param("ffffffffffffffff", False, True, False, id="no-donor"),
        pytest.param(KEY, True, True, False, id="staged-already"),
    ],
)
def test_code_sent_ahead_is_staged_in_the_same_call_only_from_a_donor(
    host, tmp_path, capsys, monkeypatch, donor_key, staged_before, ahead, stages
):
    stage(tmp_path, DONOR, donor_key)
    if staged_before:
        stage(tmp_path, B, KEY)
    staged_by: list[dict] = []

    def fake_stage(request, check_mode, diff_mode):
        staged_by.append(dict(request.params))
        return {"changed": True, "warmed": True, "outcome": "staged", "venv": "reused"}

    monkeypatch.setattr(actions, "stage", fake_stage)
    extra = {"artifact_b64": "eA==", "start": True} if ahead else {}

    code, result, _out = run_main(args(tmp_path, build={"deps_key": KEY}, **extra), capsys)

    assert code == 0, result
    assert result["staged"] is staged_before
    if stages:
        (params,) = staged_by
        assert (params["artifact_b64"], params["start"], params["upload"]) == ("eA==", True, None)
        assert result["staging"]["venv"] == "reused"
    else:
        assert (staged_by, "staging" in result) == ([], False)
