"""The release action's direct path: flipback's host code installed once per version on
a host, then every call run from it with the arguments checked on the controller
(plugins/action/release.py `_direct`, module_utils/flipback_hostcall.py and
flipback_runner.py).

The "host" here is this machine: the commands the action builds run in a shell, as SSH
would run them, with this interpreter as the host's Python and a temporary RUNNER_HOME.
The installed code is importable only from there (its own, empty `ansible` package
shadows ansible-core), so a call that works proves the host code needs nothing of
Ansible.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from types import SimpleNamespace

import pytest
import release
from ansible.module_utils import flipback_runner
from ansible.module_utils.flipback_common import FlipbackError
from fakes import action, load_plugin, run_module
from test_release import SERVICE, A, B, C, args, go_live, stage

SECRET = "s3cr3t-hunter2"


@pytest.fixture
def root(tmp_path):
    """test_release's service home: A (good), B (current), C (staged, not yet live)."""
    path = tmp_path / SERVICE
    for release_id in (A, B):
        stage(path, release_id)
        go_live(path, release_id)
    stage(path, C)
    return path


class Shell:
    """_low_level_execute_command on this machine: each command line as SSH would run it."""

    def __init__(self, fail_install: bool = False) -> None:
        self.commands: list[str] = []
        self.fail_install = fail_install

    def __call__(self, cmd, sudoable=True, in_data=None, **_kwargs):
        self.commands.append(cmd)
        if self.fail_install and "zipfile" in cmd:
            return {"rc": 1, "stdout": "", "stderr": "Permission denied"}
        data = in_data.encode() if isinstance(in_data, str) else in_data
        done = subprocess.run(cmd, shell=True, input=data, capture_output=True, check=False)
        return {
            "rc": done.returncode,
            "stdout": done.stdout.decode(),
            "stderr": done.stderr.decode(),
        }

    def kinds(self) -> list[str]:
        return ["install" if "zipfile" in cmd else "call" for cmd in self.commands]


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    module = load_plugin("release")
    monkeypatch.setattr(module, "RUNNER_HOME", str(tmp_path / "runner"))
    return module


def direct_action(plugin_module, task_args: dict, shell: Shell, *, check_mode: bool = False):
    plugin = action(plugin_module, task_args, check_mode=check_mode)
    plugin._task.diff = False
    plugin._templar = SimpleNamespace(template=lambda value: value)
    plugin._is_pipelining_enabled = lambda *a, **k: True
    plugin._compute_environment_string = lambda *a, **k: ""
    plugin._low_level_execute_command = shell
    plugin._remove_tmp_path = lambda path: None

    def no_module(**_kwargs):
        raise AssertionError("the module path ran")

    plugin._execute_module = no_module
    return plugin


HOST = {"ansible_python_interpreter": sys.executable}


def test_installs_once_then_answers_as_the_module_does(root, plugin_module, capsys, tmp_path):
    task_args = args(root, "target", steps=1)
    _code, by_module = run_module(release, task_args, capsys, check_mode=False)[:2]

    shell = Shell()
    first = direct_action(plugin_module, dict(task_args), shell).run(task_vars=dict(HOST))
    again = direct_action(plugin_module, dict(task_args), shell).run(task_vars=dict(HOST))

    assert shell.kinds() == ["call", "install", "call", "call"]
    for result in (first, again):
        assert not result.get("failed"), result
        for key in ("target", "build", "current", "candidates", "reason", "changed"):
            assert result[key] == by_module[key], key
    assert (first["target"], first["current"]) == (A, B)
    installed = os.listdir(tmp_path / "runner")
    assert len(installed) == 1
    home = tmp_path / "runner" / installed[0]
    assert (home / ".complete").is_file()
    assert os.stat(home).st_mode & 0o777 == 0o755
    # Compiled once, at install: a call imports bytecode.
    assert any(
        name.startswith("flipback_actions.") and name.endswith(".pyc")
        for name in os.listdir(home / "ansible" / "module_utils" / "__pycache__")
    )


def test_a_module_failure_comes_back_as_the_module_gives_it(root, plugin_module, capsys):
    task_args = args(root, "target", release="20261231T000000-ffffffffff")
    code, by_module = run_module(release, task_args, capsys)[:2]

    result = direct_action(plugin_module, dict(task_args), Shell()).run(task_vars=dict(HOST))

    assert code == 1 and result["failed"] is True
    assert result["msg"] == by_module["msg"]
    assert result["field"] == by_module["field"] == "release"
    assert result["retryable"] == by_module["retryable"]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        pytest.param({"steps": "many"}, "steps", id="not-an-int"),
        pytest.param({"steps": 1, "release": A}, "mutually exclusive", id="exclusive"),
        pytest.param(
            {"colour": "red"}, "Unsupported parameters for (release) module", id="unknown"
        ),
    ],
)
def test_bad_arguments_are_refused_before_the_host_is_reached(
    root, plugin_module, capsys, extra, words
):
    task_args = {**args(root, "target"), **extra}
    code, by_module = run_module(release, task_args, capsys)[:2]
    shell = Shell()

    result = direct_action(plugin_module, dict(task_args), shell).run(task_vars=dict(HOST))

    assert shell.commands == []
    assert code == 1 and result["failed"] is True
    # Under pytest the module's own name is basic.py's; on a host it is release.
    assert words in result["msg"]
    assert result["msg"] == by_module["msg"].replace("(basic.py)", "(release)")


def test_no_log_values_never_come_back(plugin_module):
    """What the host prints is censored like AnsibleModule's output: the env file's
    contents (no_log) are replaced wherever they appear."""
    echoed = json.dumps({"changed": False, "msg": f"saw {SECRET}", "outcome": "x"})

    def shell(cmd, sudoable=True, in_data=None, **_kwargs):
        return {"rc": 0, "stdout": echoed, "stderr": ""}

    task_args = {
        "action": "switch",
        "service": {"name": "shop", "port": 8000},
        "release": B,
        "env_file": SECRET,
    }
    plugin = direct_action(plugin_module, {}, Shell())
    plugin._low_level_execute_command = shell

    result = plugin._direct(task_args, dict(HOST))

    assert SECRET not in json.dumps(result)
    assert result["outcome"] == "x"


@pytest.mark.parametrize(
    ("task_vars", "pipelining"),
    [
        pytest.param({"ansible_python_interpreter": "auto"}, True, id="not-yet-discovered"),
        pytest.param(dict(HOST), False, id="no-pipelining"),
    ],
)
def test_the_module_path_runs_where_the_direct_path_cannot(
    root, plugin_module, monkeypatch, task_vars, pipelining
):
    monkeypatch.setattr(plugin_module.C.config, "get_config_value", lambda *a, **k: "auto_silent")
    shell = Shell()
    plugin = direct_action(plugin_module, args(root, "target"), shell)
    plugin._is_pipelining_enabled = lambda *a, **k: pipelining
    seen = []
    plugin._execute_module = lambda **kwargs: seen.append(kwargs) or {"target": A}

    result = plugin.run(task_vars=task_vars)

    assert shell.commands == [] and len(seen) == 1 and result["target"] == A


def test_an_install_that_fails_falls_back_to_the_module(root, plugin_module):
    shell = Shell(fail_install=True)
    plugin = direct_action(plugin_module, args(root, "target"), shell)
    seen = []
    plugin._execute_module = lambda **kwargs: seen.append(kwargs) or {"target": A}

    result = plugin.run(task_vars=dict(HOST))

    assert shell.kinds() == ["call", "install"]
    assert len(seen) == 1 and result["target"] == A


def test_a_directory_of_another_owner_is_not_used(root, plugin_module, tmp_path, monkeypatch):
    """BOOT trusts a version only when its completion mark belongs to the calling user."""
    shell = Shell()
    direct_action(plugin_module, args(root, "target"), shell).run(task_vars=dict(HOST))
    boot = plugin_module.BOOT
    monkeypatch.setattr(plugin_module, "BOOT", boot.replace("os.geteuid()", "os.geteuid() + 1"))
    shell = Shell()

    plugin = direct_action(plugin_module, args(root, "target"), shell)
    seen = []
    plugin._execute_module = lambda **kwargs: seen.append(kwargs) or {"target": A}
    plugin.run(task_vars=dict(HOST))

    # Absent (not trusted), installed again over the same digest (kept), still absent:
    # the module path answers.
    assert shell.kinds() == ["call", "install", "call"] and len(seen) == 1


def test_install_keeps_the_newest_versions_only(plugin_module, tmp_path):
    home = tmp_path / "runner"
    home.mkdir()
    for number in range(10):
        old = home / f"old{number}"
        old.mkdir()
        os.utime(old, (1_000_000 + number, 1_000_000 + number))
    # What installs left: one died long ago, one is under way.
    (home / ".deadbeef.dead").mkdir()
    os.utime(home / ".deadbeef.dead", (1_000_000, 1_000_000))
    (home / ".deadbeef.live").mkdir()
    package, digest, paths = plugin_module.host_code()
    shell = Shell()
    out = shell(
        f"{sys.executable} -I -c {plugin_module.shlex.quote(plugin_module.INSTALL)} "
        f"{home} {digest} 3",
        in_data=plugin_module.host_code_zip(package, paths),
    )

    assert json.loads(out["stdout"])["flipback_runner"] == "installed", out
    assert sorted(os.listdir(home)) == sorted([digest, "old9", "old8", ".deadbeef.live"])


def test_the_digest_names_the_code_and_the_zip_holds_its_package(plugin_module):
    package, digest, paths = plugin_module.host_code()
    names = zipfile.ZipFile(io.BytesIO(plugin_module.host_code_zip(package, paths))).namelist()

    assert package == "ansible.module_utils" and len(digest) == 32
    assert "ansible/__init__.py" in names and "ansible/module_utils/__init__.py" in names
    assert "ansible/module_utils/flipback_runner.py" in names
    assert {os.path.basename(path) for path in paths} <= {os.path.basename(n) for n in names}
    collection = "ansible_collections.flipback.flipback.plugins.module_utils"
    layout = zipfile.ZipFile(io.BytesIO(plugin_module.host_code_zip(collection, paths))).namelist()
    assert "ansible_collections/flipback/flipback/plugins/__init__.py" in layout
    assert f"{collection.replace('.', '/')}/flipback_runner.py" in layout


# --------------------------------------------------------------------------- the runner


def test_runner_answers_a_flipback_error_like_fail_json():
    def work(params, check_mode, diff_mode, warn):
        raise FlipbackError("release: no such release", field="release")

    result = flipback_runner.answer({"params": {}}, work)

    assert result["failed"] is True and result["msg"] == "release: no such release"
    assert result["field"] == "release" and result["retryable"] is False
    assert result["changed"] is False and "elapsed" in result


def test_runner_reports_a_crash_with_its_traceback():
    def work(params, check_mode, diff_mode, warn):
        raise KeyError("port")

    result = flipback_runner.answer({"params": {}}, work)

    assert result["failed"] is True and "KeyError" in result["msg"]
    assert "Traceback" in result["exception"]


def test_runner_passes_modes_and_collects_warnings():
    seen = []

    def work(params, check_mode, diff_mode, warn):
        seen.append((params, check_mode, diff_mode))
        warn("first")
        return {"changed": True, "warnings": ["second"], "names": {"b", "a"}}

    out = io.StringIO()
    flipback_runner.main(
        io.BytesIO(json.dumps({"params": {"x": 1}, "check_mode": True}).encode()), out
    )
    result = flipback_runner.answer({"params": {"x": 1}, "check_mode": True, "diff": True}, work)

    assert seen == [({"x": 1}, True, True)]
    assert result["warnings"] == ["first", "second"] and result["changed"] is True
    assert json.loads(out.getvalue())["failed"] is True  # {"x": 1} is no release request


def test_the_spec_names_the_actions_and_points_the_host_has():
    from ansible.module_utils import flipback_actions, flipback_command, flipback_request

    assert set(flipback_actions.ACTION_OPTIONS) == set(flipback_request.RELEASE_ACTIONS)
    assert set(flipback_actions.REQUIRED) == set(flipback_request.RELEASE_ACTIONS)
    assert flipback_command.POINTS == flipback_request.COMMAND_POINTS


def test_host_code_imports_nothing_of_ansible_but_its_own_package():
    """Every module_util the host runs imports only the standard library and flipback's
    own module_utils: the direct path installs nothing else."""
    import ast

    package, _digest, paths = load_plugin("release").host_code()
    for path in paths:
        with open(path) as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("ansible"):
                    assert name.startswith(f"{package}.flipback_"), (path, name)
