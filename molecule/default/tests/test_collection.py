"""flipback as a collection, used from a project of a user's own.

The module fixture builds the collection from this repository (`collection/build.py`,
as `make collection` does; the first build also commits it as a branch of a throwaway
git repository, which the project's requirements.yml installs from, to compare), installs
the tarball with `ansible-galaxy collection install` into a throwaway project outside
the repository (its own ansible.cfg,
inventory and group_vars with a service of its own, `greet` on port 8100), and runs
from there, on both machines: `flipback.flipback.deploy` (v1), the same with
`-e ref=v2`, `flipback.flipback.rollback`, `flipback.flipback.status`, then a playbook
of the user's that applies the role `flipback.flipback.flipback` (v2). Nothing of the
repository's configuration reaches those runs: every ANSIBLE_* variable molecule sets
is dropped, so modules, plugins, filters and the role can only come from the installed
collection. After each run, every machine's state is read (testinfra runs the tests
machine by machine, after the whole story).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
import testinfra
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import flipback_testlib as lib

SERVICE = "greet"
PORT = 8100
STEPS = ("deploy v1", "deploy v2", "rollback", "status", "role v2")


def _project_env() -> dict[str, str]:
    """The environment of a user's shell: none of molecule's Ansible settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    return {**env, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}


def _write_project(project: Path, repo: Path) -> None:
    machines = yaml.safe_load(
        (Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "instance_config.yml").read_text()
    )
    (project / "inventory" / "group_vars" / "all").mkdir(parents=True)
    (project / "ansible.cfg").write_text(
        "[defaults]\n"
        "inventory = inventory\n"
        "collections_path = collections\n"
        "callbacks_enabled = flipback.flipback.flipback_timing\n"
        "interpreter_python = /usr/bin/python3\n"
        "gathering = explicit\n"
        "[ssh_connection]\n"
        "pipelining = True\n"
    )
    hosts = {
        m["instance"]: {
            "ansible_host": m["address"],
            "ansible_port": m["port"],
            "ansible_user": m["user"],
            "ansible_private_key_file": m["identity_file"],
            "ansible_ssh_common_args": "-o UserKnownHostsFile=/dev/null "
            "-o StrictHostKeyChecking=no",
        }
        for m in machines
    }
    (project / "inventory" / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    service = {
        "name": SERVICE,
        "source": str(repo),
        "subdir": "services/hello",
        "ref": "v1",
        "app": "app:app",
        "port": PORT,
        "health": {"path": "/health", "expect_json": {"ok": True, "service": "hello"}},
    }
    (project / "inventory" / "group_vars" / "all" / "services.yml").write_text(
        yaml.safe_dump({"flipback_services": [service]})
    )
    (project / "site.yml").write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Deploy my services with flipback's role",
                    "hosts": "all",
                    "gather_facts": False,
                    "roles": [{"role": "flipback.flipback.flipback"}],
                }
            ]
        )
    )


def _state(hosts: list[str]) -> dict[str, dict]:
    """Per machine: the service's releases (id -> git sha), current release, health."""
    seen = {}
    for name in hosts:
        machine = testinfra.get_host(
            f"ansible://{name}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"]
        )
        root = f"/srv/{SERVICE}"
        releases = machine.file(f"{root}/releases").listdir()
        health = machine.run(f"curl -sS --max-time 5 http://127.0.0.1:{PORT}/health")
        current = machine.file(f"{root}/current")
        seen[name] = {
            "releases": {
                r: yaml.safe_load(machine.file(f"{root}/releases/{r}/manifest.json").content)[
                    "git_sha"
                ]
                for r in releases
            },
            "current": os.path.basename(current.linked_to) if current.is_symlink else None,
            "health": yaml.safe_load(health.stdout) if health.rc == 0 else health.stderr,
        }
    return seen


def _sha(repo: Path, ref: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", f"{ref}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture(scope="module")
def story():
    base = Path(tempfile.mkdtemp(prefix="flipback-user-"))
    project, repo = base / "project", base / "hello-repo"
    python = sys.executable
    try:
        builds = []
        # The first build also commits the collection to a git repository, as a branch.
        for out, extra in (("build-1", ["--git", f"{base}/dist.git,collection"]), ("build-2", [])):
            built = subprocess.run(
                [
                    python,
                    str(lib.PROJECT / "collection" / "build.py"),
                    "--out",
                    str(base / out),
                    *extra,
                ],
                capture_output=True,
                text=True,
                check=True,
                env=_project_env(),
            )
            builds.append(Path(built.stdout.strip()))
        project.mkdir()
        subprocess.run(
            [python, str(lib.PROJECT / "tests" / "fixtures" / "service_repo.py"), str(repo)],
            check=True,
            capture_output=True,
        )
        _write_project(project, repo)
        install = subprocess.run(
            ["ansible-galaxy", "collection", "install", str(builds[0]), "-p", "collections"],
            cwd=project,
            capture_output=True,
            text=True,
            env=_project_env(),
        )
        assert install.returncode == 0, install.stdout + install.stderr
        (project / "requirements.yml").write_text(
            yaml.safe_dump(
                {
                    "collections": [
                        {
                            "name": f"git+file://{base}/dist.git",
                            "type": "git",
                            "version": "collection",
                        }
                    ]
                }
            )
        )
        from_git = subprocess.run(
            ["ansible-galaxy", "collection", "install", "-r", "requirements.yml", "-p", "from-git"],
            cwd=project,
            capture_output=True,
            text=True,
            env=_project_env(),
        )
        assert from_git.returncode == 0, from_git.stdout + from_git.stderr
        hosts = sorted(
            yaml.safe_load((project / "inventory" / "hosts.yml").read_text())["all"]["hosts"]
        )
        argv = {
            "deploy v1": ["flipback.flipback.deploy"],
            "deploy v2": ["flipback.flipback.deploy", "-e", "ref=v2"],
            "rollback": ["flipback.flipback.rollback"],
            "status": ["flipback.flipback.status"],
            "role v2": ["site.yml", "-e", "ref=v2"],
        }
        runs, states = {}, {}
        for step in STEPS:
            runs[step] = subprocess.run(
                ["ansible-playbook", *argv[step]],
                cwd=project,
                capture_output=True,
                text=True,
                env=_project_env(),
                timeout=600,
            )
            states[step] = _state(hosts)
        yield {
            "builds": builds,
            "installed": project / "collections" / "ansible_collections" / "flipback" / "flipback",
            "from_git": project / "from-git" / "ansible_collections" / "flipback" / "flipback",
            "runs": runs,
            "states": states,
            "sha": {tag: _sha(repo, tag) for tag in ("v1", "v2")},
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _release_of(state: dict, sha: str) -> str:
    matches = [r for r, s in state["releases"].items() if s == sha]
    assert len(matches) == 1, f"releases of {sha}: {state['releases']}"
    return matches[0]


def test_the_build_is_reproducible_and_holds_only_the_collection(story):
    first, second = (hashlib.sha256(p.read_bytes()).hexdigest() for p in story["builds"])
    assert first == second, "two builds of the same sources differ"
    with tarfile.open(story["builds"][0]) as tar:
        names = tar.getnames()
    assert "plugins/modules/release.py" in names
    assert "plugins/module_utils/flipback_switch.py" in names
    assert "roles/flipback/tasks/main.yml" in names
    assert "playbooks/deploy.yml" in names
    unwanted = [
        n
        for n in names
        if n.endswith(".pyc")
        or "__pycache__" in n
        or n.split("/")[0] in ("tests", "sandbox", "bench", "molecule", "library")
        or "sandbox" in n
    ]
    assert not unwanted, unwanted


def test_the_installed_collection_imports_its_own_module_utils(story):
    legacy = [
        str(p.relative_to(story["installed"]))
        for p in story["installed"].rglob("*.py")
        if "ansible.module_utils.flipback" in p.read_text()
        or "module_utils.__path__" in p.read_text()
    ]
    assert not legacy, legacy


def test_a_git_install_from_requirements_gives_the_same_collection(story):
    def files(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and p.name not in ("MANIFEST.json", "FILES.json")
        }

    tarball, git = files(story["installed"]), files(story["from_git"])
    assert "plugins/modules/release.py" in git
    assert sorted(git) == sorted(tarball)
    assert [n for n in git if git[n] != tarball[n]] == []


@pytest.mark.parametrize("step", STEPS)
def test_each_run_from_the_user_project_succeeds(story, step):
    run = story["runs"][step]
    assert run.returncode == 0, f"{step}:\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}"


def test_deploy_from_the_collection_puts_v1_live(host, story):
    state = story["states"]["deploy v1"][host.backend.get_hostname()]
    v1 = _release_of(state, story["sha"]["v1"])
    assert state["current"] == v1
    assert state["health"]["release"] == v1, state["health"]
    # The role's tasks ran from the collection (their names carry its FQCN).
    assert "flipback.flipback.flipback : " in story["runs"]["deploy v1"].stdout


def test_deploy_v2_then_rollback_from_the_collection(host, story):
    name = host.backend.get_hostname()
    after_v2, after_rollback = story["states"]["deploy v2"][name], story["states"]["rollback"][name]
    v1 = _release_of(after_v2, story["sha"]["v1"])
    v2 = _release_of(after_v2, story["sha"]["v2"])
    assert after_v2["current"] == v2
    assert after_v2["health"]["release"] == v2, after_v2["health"]
    assert after_rollback["current"] == v1
    assert after_rollback["health"]["release"] == v1, after_rollback["health"]


def test_status_from_the_collection_names_the_live_release(host, story):
    name = host.backend.get_hostname()
    v1 = _release_of(story["states"]["status"][name], story["sha"]["v1"])
    row = [
        line
        # The table is one string of the default callback's JSON: its newlines escaped.
        for line in story["runs"]["status"].stdout.replace("\\n", "\n").splitlines()
        if line.split()[:2] == [SERVICE, name]
    ]
    assert row, story["runs"]["status"].stdout
    assert row[0].split()[2] == v1, row[0]


def test_a_user_playbook_with_the_role_deploys_v2(host, story):
    state = story["states"]["role v2"][host.backend.get_hostname()]
    v2 = _release_of(state, story["sha"]["v2"])
    assert state["current"] == v2
    assert state["health"]["release"] == v2, state["health"]
    assert host.service(f"{SERVICE}@{v2}").is_running
