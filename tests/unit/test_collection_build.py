"""Unit tests of collection/build.py: the rewrites that make the repository's files the
collection's, and the tree it stages (the tarball and its install are checked on real
machines by the molecule scenario `default`)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from fakes import load_file

ROOT = Path(__file__).resolve().parents[2]
build = load_file("flipback_collection_build", ROOT / "collection" / "build.py")
UTILS = "ansible_collections.flipback.flipback.plugins.module_utils"

PLUGIN = """from __future__ import annotations

import ansible.module_utils
from ansible import constants as C
from ansible.plugins.action import ActionBase

{comment}for _path in C.DEFAULT_MODULE_UTILS_PATH:
    if _path not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(_path)

from ansible.module_utils.flipback_config import (
    ARGUMENT_SPEC,
)
from ansible.module_utils.flipback_runtime import env_file_text
"""


@pytest.mark.parametrize("comment", ["", "# Why the loop is here.\n"], ids=["bare", "commented"])
def test_a_controller_plugin_loses_the_path_loop_and_imports_the_collection(comment):
    out = build.collection_python(PLUGIN.format(comment=comment), "plugins/action/x.py")
    assert out == (
        "from __future__ import annotations\n\n"
        "from ansible.plugins.action import ActionBase\n\n"
        f"from {UTILS}.flipback_config import (\n    ARGUMENT_SPEC,\n)\n"
        f"from {UTILS}.flipback_runtime import env_file_text\n"
    )


def test_constants_stay_when_the_plugin_uses_them():
    text = PLUGIN.format(comment="") + "forks = C.DEFAULT_FORKS\n"
    out = build.collection_python(text, "plugins/filter/x.py")
    assert "from ansible import constants as C\n" in out
    assert "import ansible.module_utils\n" not in out


def test_a_module_keeps_core_module_utils_and_imports_its_own_from_the_collection():
    text = (
        "from ansible.module_utils.basic import AnsibleModule\n"
        "from ansible.module_utils.flipback_common import respond\n"
    )
    assert build.collection_python(text, "library/x.py") == (
        "from ansible.module_utils.basic import AnsibleModule\n"
        f"from {UTILS}.flipback_common import respond\n"
    )


def test_another_form_of_the_path_hack_fails_the_build():
    text = "import ansible.module_utils\nansible.module_utils.__path__.insert(0, 'x')\n"
    with pytest.raises(build.BuildError, match=r"plugins/action/odd.py: extends"):
        build.collection_python(text, "plugins/action/odd.py")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "{{ env | flipback_env_file(name) }}",
            "{{ env | flipback.flipback.flipback_env_file(name) }}",
        ),
        (
            "{{ x\n   | flipback_lock_hold(1) }}",
            "{{ x\n   | flipback.flipback.flipback_lock_hold(1) }}",
        ),
        (
            "{{ s | map('flipback_build_of') }}",
            "{{ s | map('flipback.flipback.flipback_build_of') }}",
        ),
        # Variables of the same prefix are not filters: untouched.
        ("{{ flipback_env_file_x | default(flipback_build_of) }}", None),
        ("{{ a | map(attribute='flipback_env_file') }}", None),
    ],
    ids=["pipe", "folded", "map", "variables", "attribute"],
)
def test_the_role_and_playbooks_name_the_filters_in_full(text, expected):
    filters = ["flipback_env_file", "flipback_lock_hold", "flipback_build_of"]
    assert build.collection_yaml(text, filters) == (text if expected is None else expected)


def test_every_filter_the_plugins_declare_is_found():
    declared = set()
    for path in (ROOT / "plugins" / "filter").glob("*.py"):
        body = path.read_text().split("def filters(self)", 1)[1]
        declared |= set(re.findall(r'"(flipback_\w+)":', body))
    assert set(build.filter_names()) == declared


def test_the_staged_tree_is_the_collection_and_nothing_else(tmp_path):
    tree = tmp_path / "ansible_collections" / "flipback" / "flipback"
    build.stage(tree)
    files = {str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file()}
    modules = {f"plugins/modules/{p.name}" for p in (ROOT / "library").glob("*.py")}
    assert modules <= files
    assert "playbooks/deploy.yml" in files
    assert "playbooks/sandbox.yml" not in files
    assert "roles/flipback/tasks/main.yml" in files
    assert not [f for f in files if "sandbox" in f or f.endswith(".pyc") or "__pycache__" in f]
    leftovers = [
        f
        for f in files
        if f.endswith(".py")
        and re.search(r"ansible\.module_utils\.(flipback_|__path__)", (tree / f).read_text())
    ]
    assert not leftovers
    short_filters = [
        f
        for f in files
        if f.endswith(".yml")
        and re.search(
            r"(\|\s*|map\(')(" + "|".join(build.filter_names()) + r")\b",
            (tree / f).read_text(),
        )
    ]
    assert not short_filters


def test_galaxy_version_must_be_the_projects(monkeypatch, tmp_path):
    (tmp_path / "collection").mkdir()
    (tmp_path / "collection" / "galaxy.yml").write_text(
        "namespace: flipback\nname: flipback\nversion: 9.9.9\n"
    )
    (tmp_path / "pyproject.toml").write_text('[project]\nversion = "0.1.0"\n')
    monkeypatch.setattr(build, "ROOT", tmp_path)
    with pytest.raises(
        build.BuildError, match=r"version '9.9.9' differs from pyproject.toml's '0.1.0'"
    ):
        build.check_version()


def test_git_publish_commits_the_tree_once_and_never_a_checked_out_branch(tmp_path):
    tree = tmp_path / "tree"
    (tree / "tests" / "sanity").mkdir(parents=True)
    (tree / "galaxy.yml").write_text("name: flipback\n")
    (tree / "tests" / "sanity" / "ignore-2.19.txt").write_text("x\n")
    dist = str(tmp_path / "dist.git")
    first = build.git_publish(tree, dist, "collection", 1_795_953_600)
    assert build.git_publish(tree, dist, "collection", 1_795_953_600) == first
    listed = subprocess.run(
        ["git", f"--git-dir={dist}", "ls-tree", "-r", "--name-only", "collection"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert listed == ["galaxy.yml"]
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    with pytest.raises(build.BuildError, match=r"branch 'main' is checked out"):
        build.git_publish(tree, str(work), "main", 1_795_953_600)
