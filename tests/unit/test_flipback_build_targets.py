"""Unit tests of the build for the hosts' platforms (module_utils/flipback_build.py:
Target, target_of, group_targets, and the Builder with a target; the release_build
action's build per target). A fake pip stands in for the index: it answers with the
wheels a target would get, records its arguments, and never touches the network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.flipback_build import (
    PROBE,
    PROBE_COMMAND,
    Builder,
    BuildError,
    BuildSpec,
    Target,
    group_targets,
    target_of,
)
from fakes import load_plugin

pytestmark = pytest.mark.controller

release_build = load_plugin("release_build")

BOOKWORM = {
    "implementation": "cpython",
    "python": "3.11",
    "machine": "x86_64",
    "libc": "glibc 2.36",
}
TRIXIE = {"implementation": "cpython", "python": "3.13", "machine": "x86_64", "libc": "glibc 2.41"}
ARM = {"implementation": "cpython", "python": "3.11", "machine": "aarch64", "libc": "glibc 2.36"}

# A fake index. `compiled` has wheels for CPython 3.11 and 3.13 on manylinux_2_17 x86_64;
# `sdistonly` has a source only (pure Python); `cext` a source only that builds a
# C extension; anything else is one pure wheel.
FAKE_PIP = """\
import re
import sys
from pathlib import Path

args = sys.argv[1:]
here = Path(__file__).parent
with open(here / "pip-calls.log", "a", encoding="utf-8") as log:
    log.write(" ".join(args) + "\\n")
VALUED = ("--dest", "--wheel-dir", "--find-links", "-r", "-c", "--platform",
          "--python-version", "--implementation", "--abi")
opts, reqs, i = {}, [], 1
while i < len(args):
    if args[i] in VALUED:
        opts.setdefault(args[i], []).append(args[i + 1])
        i += 2
        continue
    if not args[i].startswith("-"):
        reqs.append(args[i])
    i += 1
if args[0] == "wheel":
    name, version = reqs[0].split("==")
    out = Path(opts["--wheel-dir"][0])
    tag = "cp311-cp311-linux_x86_64" if name == "cext" else "py3-none-any"
    (out / f"{name}-{version}-{tag}.whl").write_bytes(b"built")
    sys.exit(0)
for path in opts.get("-r", []):
    reqs += [line.split()[0] for line in Path(path).read_text().splitlines() if line.strip()]
dest = Path(opts["--dest"][0])
found = [p for d in opts.get("--find-links", []) for p in Path(d).glob("*.whl")]
pv = opts.get("--python-version", ["311"])[0]
for req in reqs:
    name, version = req.split("==")
    if name == "compiled":
        if "manylinux_2_17_x86_64" not in opts.get("--platform", ["manylinux_2_17_x86_64"]):
            sys.exit(f"ERROR: No matching distribution found for {req}")
        wheel = f"{name}-{version}-cp{pv}-cp{pv}-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
    elif name in ("sdistonly", "cext"):
        local = [p for p in found if p.name.startswith(f"{name}-{version}-")]
        if not local:
            print(f"ERROR: Could not find a version that satisfies the requirement {req} "
                  "(from versions: none)", file=sys.stderr)
            sys.exit(f"ERROR: No matching distribution found for {req}")
        wheel = local[0].name
    else:
        wheel = f"{name}-{version}-py3-none-any.whl"
    (dest / wheel).write_bytes(f"{wheel}".encode())
"""


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": str(repo.parent / "no-gitconfig"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "GIT_AUTHOR_DATE": "@1704164645 +0000",
        "GIT_COMMITTER_DATE": "@1704164645 +0000",
    }
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def make_repo(tmp_path: Path, deps: list[str]) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "-b", "main")
    text = f'[project]\nname = "hello"\ndependencies = {json.dumps(deps)}\n'
    (repo / "pyproject.toml").write_text(text)
    (repo / "app.py").write_text("v = 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "v1")
    return repo


@pytest.fixture
def pip(tmp_path) -> list[str]:
    script = tmp_path / "fake_pip.py"
    script.write_text(FAKE_PIP)
    return [sys.executable, str(script)]


def calls(pip: list[str]) -> list[str]:
    log = Path(pip[1]).with_name("pip-calls.log")
    return log.read_text().splitlines() if log.exists() else []


def spec(repo: Path, pip: list[str], tmp_path: Path, target: Target | None) -> BuildSpec:
    return BuildSpec(
        service="hello",
        source=str(repo),
        subdir="",
        ref="main",
        cache_dir=str(tmp_path / "cache"),
        pip=pip,
        target=target,
    )


DEPS = ["uvicorn==0.30.0", "compiled==1.0"]


# -------------------------------------------------------------------------- targets


def test_platforms_go_from_the_hosts_glibc_down_most_specific_first():
    tags = Target("3.11", "x86_64", "2.36").platforms()
    assert tags[:2] == ["manylinux_2_36_x86_64", "manylinux_2_35_x86_64"]
    assert tags[-1] == "linux_x86_64"
    # The older names follow the glibc they stand for.
    for legacy, glibc in (("manylinux2014", 17), ("manylinux2010", 12), ("manylinux1", 5)):
        assert tags.index(f"{legacy}_x86_64") == tags.index(f"manylinux_2_{glibc}_x86_64") + 1
    assert "manylinux_2_4_x86_64" not in tags


def test_platforms_of_arm_start_at_glibc_2_17():
    tags = Target("3.11", "aarch64", "2.36").platforms()
    assert tags[-3:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64", "linux_aarch64"]


def test_pip_args_name_the_targets_python_abi_and_every_platform():
    target = Target("3.13", "x86_64", "2.41")
    args = target.pip_args()
    assert args[:6] == ["--implementation", "cp", "--python-version", "313", "--abi", "cp313"]
    assert args[6:] == [x for tag in target.platforms() for x in ("--platform", tag)]


@pytest.mark.parametrize(
    ("wheel", "accepted"),
    [
        ("a-1-py3-none-any.whl", True),
        ("a-1-cp313-cp313-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True),
        ("a-1-cp311-cp311-manylinux_2_17_x86_64.whl", False),
        ("a-1-cp39-abi3-manylinux_2_17_x86_64.whl", True),
        ("a-1-cp313-cp313-manylinux_2_42_x86_64.whl", False),
        ("a-1-cp313-cp313-manylinux_2_17_aarch64.whl", False),
        ("a-1-cp313-cp313-musllinux_1_2_x86_64.whl", False),
        ("a-1-py3-none-manylinux_2_17_x86_64.whl", True),
    ],
    ids=["pure", "own-python", "other-python", "abi3", "newer-glibc", "other-arch", "musl", "uv"],
)
def test_accepts_only_wheels_that_install_on_the_target(wheel, accepted):
    assert Target("3.13", "x86_64", "2.41").accepts(wheel) is accepted


@pytest.mark.parametrize(
    ("probe", "key"),
    [
        (BOOKWORM, "cp311-glibc2.36-x86_64"),
        (json.dumps(TRIXIE), "cp313-glibc2.41-x86_64"),
        # raw's output over a tty: CR LF, and a blank line.
        ("\r\n" + json.dumps(ARM) + "\r\n", "cp311-glibc2.36-aarch64"),
    ],
    ids=["dict", "json", "raw-output"],
)
def test_target_of_a_probe(probe, key):
    assert target_of("web-1", probe).key == key


@pytest.mark.parametrize(
    ("probe", "says"),
    [
        ("bash: /usr/bin/python3: No such file or directory", "expected one line of JSON"),
        ({**BOOKWORM, "implementation": "pypy"}, "implementation 'pypy' (expected cpython)"),
        ({**BOOKWORM, "libc": ""}, "musl hosts"),
        ({**BOOKWORM, "python": "2.7"}, "python '2.7' (expected 3.N)"),
        ({**BOOKWORM, "machine": "x86 64; rm"}, "expected an architecture"),
    ],
    ids=["no-python", "pypy", "musl", "python2", "bad-machine"],
)
def test_target_of_refuses_naming_the_host_and_what_it_runs(probe, says):
    with pytest.raises(BuildError) as err:
        target_of("web-1", probe)
    assert "host web-1" in err.value.msg
    assert says in err.value.msg
    assert err.value.details["field"] == "targets"
    assert err.value.retryable is False


def test_hosts_of_one_platform_are_one_target():
    groups = group_targets({"b": BOOKWORM, "x": TRIXIE, "a": BOOKWORM})
    assert {key: hosts for key, (_t, hosts) in groups.items()} == {
        "cp311-glibc2.36-x86_64": ["a", "b"],
        "cp313-glibc2.41-x86_64": ["x"],
    }


def test_the_probe_runs_on_the_controllers_python_too():
    # The probe itself, run as the role runs it: a Python 3 of glibc answers one line.
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    target = target_of("localhost", proc.stdout)
    assert target.python == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_the_role_runs_the_probe_of_the_build():
    request = Path(__file__).parents[2] / "roles" / "flipback" / "tasks" / "request.yml"
    tasks = yaml.safe_load(request.read_text())
    probes = [t["ansible.builtin.raw"] for t in tasks if "ansible.builtin.raw" in t]
    assert probes == [PROBE_COMMAND]


# -------------------------------------------------------------------------- builds


def test_each_target_gets_its_own_wheels_and_id_of_one_source_build(tmp_path, pip):
    repo = make_repo(tmp_path, DEPS)
    bookworm, trixie = target_of("a", BOOKWORM), target_of("b", TRIXIE)
    one = Builder(spec(repo, pip, tmp_path, bookworm)).build()
    other = Builder(spec(repo, pip, tmp_path, trixie)).build()
    assert (
        "compiled-1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl" in one["wheels"]
    )
    assert (
        "compiled-1.0-cp313-cp313-manylinux_2_17_x86_64.manylinux2014_x86_64.whl" in other["wheels"]
    )
    assert one["id"] != other["id"]
    assert one["deps_key"] != other["deps_key"]
    assert one["source_build"] == other["source_build"]
    assert (one["target"], other["target"]) == (bookworm.key, trixie.key)
    downloads = [c for c in calls(pip) if c.startswith("download") and "uv==" not in c]
    assert [" ".join(trixie.pip_args()) in c for c in downloads] == [False, True]
    # uv's wheel for the hosts is downloaded for their platform too.
    uv = [c for c in calls(pip) if "uv==" in c]
    assert all("--platform manylinux_2_36_x86_64" in c for c in uv[:1])


def test_same_target_again_is_the_same_id_and_no_download(tmp_path, pip):
    repo = make_repo(tmp_path, DEPS)
    target = target_of("a", TRIXIE)
    first = Builder(spec(repo, pip, tmp_path, target)).build()
    before = len(calls(pip))
    again = Builder(spec(repo, pip, tmp_path, target)).build()
    assert (again["id"], again["changed"], again["checksum"]) == (
        first["id"],
        False,
        first["checksum"],
    )
    assert len(calls(pip)) == before


def test_a_pure_source_only_dependency_is_built_here_for_every_target(tmp_path, pip):
    repo = make_repo(tmp_path, [*DEPS, "sdistonly==2.0"])
    result = Builder(spec(repo, pip, tmp_path, target_of("a", TRIXIE))).build()
    assert "sdistonly-2.0-py3-none-any.whl" in result["wheels"]
    wheel_calls = [c for c in calls(pip) if c.startswith("wheel")]
    assert len(wheel_calls) == 1 and "--no-binary=:all:" in wheel_calls[0]


def test_a_source_only_dependency_with_c_code_is_refused_naming_it_and_the_target(tmp_path, pip):
    repo = make_repo(tmp_path, [*DEPS, "cext==1.0"])
    with pytest.raises(BuildError) as err:
        Builder(spec(repo, pip, tmp_path, target_of("a", TRIXIE))).build()
    msg = err.value.msg
    assert "cext==1.0 has no wheel for target cp313-glibc2.41-x86_64" in msg
    assert "CPython 3.13, glibc 2.41, x86_64" in msg
    assert "cext-1.0-cp311-cp311-linux_x86_64.whl, a wheel for this controller only" in msg
    assert "pin a version that has one" in msg
    assert err.value.details["value"] == {
        "package": "cext==1.0",
        "target": "cp313-glibc2.41-x86_64",
    }
    assert err.value.retryable is False


def test_a_dependency_with_no_wheel_for_the_arch_names_the_target(tmp_path, pip):
    repo = make_repo(tmp_path, DEPS)
    with pytest.raises(BuildError) as err:
        Builder(spec(repo, pip, tmp_path, target_of("a", {**ARM, "machine": "riscv64"}))).build()
    assert "No matching distribution found for compiled==1.0" in err.value.msg
    assert "target cp311-glibc2.36-riscv64 (CPython 3.11, glibc 2.36, riscv64)" in err.value.msg


# -------------------------------------------------------------------------- action


def test_the_action_builds_once_per_target_and_maps_each_host(tmp_path, pip):
    repo = make_repo(tmp_path, DEPS)
    base = spec(repo, pip, tmp_path, None)
    probes = {"web-1": BOOKWORM, "web-2": json.dumps(TRIXIE), "web-3": BOOKWORM}
    result = release_build.build_targets(base, probes)
    assert result["hosts"] == {
        "web-1": "cp311-glibc2.36-x86_64",
        "web-2": "cp313-glibc2.41-x86_64",
        "web-3": "cp311-glibc2.36-x86_64",
    }
    assert sorted(result["targets"]) == ["cp311-glibc2.36-x86_64", "cp313-glibc2.41-x86_64"]
    builds = list(result["targets"].values())
    assert builds[0]["id"] != builds[1]["id"]
    assert result["source_build"] == builds[0]["source_build"] == builds[1]["source_build"]
    assert all(b["code_b64"] for b in builds)
    # Each records every target's build (for a rollback naming another target's id).
    assert all(b["builds"] == {k: t["id"] for k, t in result["targets"].items()} for b in builds)
    assert result["changed"] is True
    # The source is fetched once for both targets.
    again = release_build.build_targets(base, probes)
    assert again["changed"] is False
    assert {k: b["id"] for k, b in again["targets"].items()} == {
        k: b["id"] for k, b in result["targets"].items()
    }
