"""Build the Ansible collection flipback.flipback from this repository's own files.

    python collection/build.py [--out build]

The repository keeps its project layout (library/, module_utils/, plugins/, roles/,
playbooks/); the collection is made from those files, never kept as a second copy:

    library/*.py              -> plugins/modules/
    module_utils/*.py         -> plugins/module_utils/
    plugins/{action,filter,callback}/*.py
    roles/flipback/           -> roles/flipback/
    playbooks/*.yml           -> playbooks/ (not sandbox.yml: it drives the test machines)
    collection/{galaxy.yml,README.md,CHANGELOG.md,meta/runtime.yml,tests/sanity/}

Two rewrites make the files collection code. In Python, `ansible.module_utils.flipback_*`
(how a project's module_utils directory is imported) becomes
`ansible_collections.flipback.flipback.plugins.module_utils.flipback_*`, and the
controller plugins lose the lines that put the project's module_utils directories on
`ansible.module_utils.__path__` (in a collection, Ansible's collection loader imports
module_utils itself). In the role's and playbooks' YAML, the project's filters are
named in full (`| flipback.flipback.flipback_env_file`,
`map('flipback.flipback.flipback_build_of')`): ansible-core finds a collection's
modules, action plugins and roles by their short names from inside that collection,
but not its Jinja filters. The sandbox harness, bench/, tests and compiled
files are never copied.

It writes the tree `<out>/collection/ansible_collections/flipback/flipback/` (what
ansible-test sanity runs on), lets `ansible-galaxy collection build` make the
artifact, then repacks it with sorted entries, root ownership and every time set to
the last commit's (SOURCE_DATE_EPOCH if set): the same sources give the same bytes.
With `--git REPO,BRANCH` it also commits that tree as BRANCH of REPO, for
`ansible-galaxy collection install git+<url>,<branch>` (this repository's own layout is
not a collection's, so a git install needs that generated branch).
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE, NAME = "flipback", "flipback"
UTILS = f"ansible_collections.{NAMESPACE}.{NAME}.plugins.module_utils"

# Source directory (relative to ROOT) -> directory in the collection; Python files only.
PYTHON_DIRS = {
    "library": "plugins/modules",
    "module_utils": "plugins/module_utils",
    "plugins/action": "plugins/action",
    "plugins/filter": "plugins/filter",
    "plugins/callback": "plugins/callback",
}
ROLES = ("flipback",)
# collection/ holds what only the collection has; galaxy.yml keeps tests/ out of the tarball.
COLLECTION_FILES = (
    "galaxy.yml",
    "README.md",
    "CHANGELOG.md",
    "meta/runtime.yml",
    "tests/sanity/ignore-2.19.txt",
)
# Playbooks that drive the sandbox machines stay in the repository.
HARNESS_PLAYBOOKS = ("sandbox.yml",)

_PROJECT_IMPORT = re.compile(r"\bansible\.module_utils\.(flipback_\w+)")
# The project layout's way for controller plugins to import module_utils (a comment
# line may lead it); in a collection the collection loader does this.
_PATH_LOOP = re.compile(
    r"(?:^#[^\n]*\n)?"
    r"^for _path in C\.DEFAULT_MODULE_UTILS_PATH:\n"
    r"^    if _path not in ansible\.module_utils\.__path__:\n"
    r"^        ansible\.module_utils\.__path__\.append\(_path\)\n\n",
    re.MULTILINE,
)


# The filters' names, as their plugins declare them (`"flipback_x": function,`).
_FILTER_NAME = re.compile(r'^\s+"(flipback_\w+)": \w+,$', re.MULTILINE)


class BuildError(Exception):
    pass


def filter_names() -> list[str]:
    names = []
    for path in sorted((ROOT / "plugins" / "filter").glob("*.py")):
        names += _FILTER_NAME.findall(path.read_text())
    if not names:
        raise BuildError("plugins/filter: found no filter names to qualify")
    return names


def collection_yaml(text: str, filters: list[str]) -> str:
    """A role or playbook file as the collection's: the project's filters by full name."""
    names = "|".join(map(re.escape, filters))
    # `| name` and `map('name')`.
    used = re.compile(rf"(\|\s*|\bmap\(\s*['\"])({names})\b")
    return used.sub(lambda m: f"{m.group(1)}{NAMESPACE}.{NAME}.{m.group(2)}", text)


def collection_python(text: str, name: str) -> str:
    """A repository Python file as the collection's: imports in collection form."""
    text, loops = _PATH_LOOP.subn("", text)
    if loops:
        text = text.replace("import ansible.module_utils\n", "", 1)
        if "C." not in text:
            text = text.replace("from ansible import constants as C\n", "", 1)
    text = _PROJECT_IMPORT.sub(lambda m: f"{UTILS}.{m.group(1)}", text)
    if "ansible.module_utils.__path__" in text:
        raise BuildError(
            f"{name}: extends ansible.module_utils.__path__ in a form the build does not "
            "know; expected the loop over C.DEFAULT_MODULE_UTILS_PATH"
        )
    return text


def _files(directory: Path, pattern: str) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob(pattern)
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def stage(tree: Path) -> None:
    """Write the collection's files into `tree` (emptied first)."""
    if tree.exists():
        shutil.rmtree(tree)
    for source, target in PYTHON_DIRS.items():
        for path in _files(ROOT / source, "*.py"):
            out = tree / target / path.relative_to(ROOT / source)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(collection_python(path.read_text(), str(path.relative_to(ROOT))))
    filters = filter_names()
    copies = [
        (path, tree / "roles" / role / path.relative_to(ROOT / "roles" / role))
        for role in ROLES
        for path in _files(ROOT / "roles" / role, "*")
    ]
    copies += [
        (path, tree / "playbooks" / path.name)
        for path in sorted((ROOT / "playbooks").glob("*.yml"))
        if path.name not in HARNESS_PLAYBOOKS
    ]
    for path, out in copies:
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix in (".yml", ".yaml", ".j2"):
            out.write_text(collection_yaml(path.read_text(), filters))
        else:
            shutil.copyfile(path, out)
    for name in COLLECTION_FILES:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "collection" / name, tree / name)


def check_version() -> str:
    galaxy = yaml.safe_load((ROOT / "collection" / "galaxy.yml").read_text())
    with open(ROOT / "pyproject.toml", "rb") as handle:
        project = tomllib.load(handle)["project"]["version"]
    if (galaxy["namespace"], galaxy["name"]) != (NAMESPACE, NAME):
        raise BuildError(f"collection/galaxy.yml: expected {NAMESPACE}.{NAME}")
    if str(galaxy["version"]) != project:
        raise BuildError(
            f"collection/galaxy.yml version {galaxy['version']!r} differs from "
            f"pyproject.toml's {project!r}; give both the same version"
        )
    return project


def source_date() -> int:
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    out = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%ct"],
        capture_output=True,
        text=True,
        check=False,
    )
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else 0


def repack(artifact: Path, mtime: int) -> None:
    """Rewrite `artifact` with sorted entries, fixed times and owners (same bytes for
    the same files); file modes as ansible-galaxy set them."""
    with tarfile.open(artifact, "r:gz") as source:
        members = sorted(source.getmembers(), key=lambda m: m.name)
        data = {m.name: source.extractfile(m).read() for m in members if m.isfile()}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as out:
        for member in members:
            member.mtime = mtime
            member.uid = member.gid = 0
            member.uname = member.gname = ""
            member.pax_headers = {}
            body = data.get(member.name)
            out.addfile(member, io.BytesIO(body) if body is not None else None)
    with (
        open(artifact, "wb") as handle,
        gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=mtime) as packed,
    ):
        packed.write(raw.getvalue())


def build(out: Path) -> Path:
    version = check_version()
    tree = out / "collection" / "ansible_collections" / NAMESPACE / NAME
    stage(tree)
    artifact = out / f"{NAMESPACE}-{NAME}-{version}.tar.gz"
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            ["ansible-galaxy", "collection", "build", str(tree), "--output-path", scratch],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        shutil.move(Path(scratch) / artifact.name, artifact)
    repack(artifact, source_date())
    return artifact


def git_publish(tree: Path, repo: str, branch: str, mtime: int) -> str:
    """Commit the staged tree (without tests/, as the tarball) as the tip of `branch` in
    the git repository `repo` (a bare one is made if the path does not exist), so that
    `ansible-galaxy collection install git+<url>,<branch>` installs the collection. The
    commit is made with a temporary index, never touching a work tree; a tree equal to
    the branch's is not committed again. Returns the commit."""
    if not Path(repo).exists():
        subprocess.run(["git", "init", "-q", "--bare", repo], check=True)
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "flipback build",
        "GIT_AUTHOR_EMAIL": "build@flipback.invalid",
        "GIT_COMMITTER_NAME": "flipback build",
        "GIT_COMMITTER_EMAIL": "build@flipback.invalid",
        "GIT_AUTHOR_DATE": f"{mtime} +0000",
        "GIT_COMMITTER_DATE": f"{mtime} +0000",
    }

    def git(*args: str, **kwargs) -> str:
        return subprocess.run(
            ["git", f"--git-dir={git_dir}", *args],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            **kwargs,
        ).stdout.strip()

    git_dir = subprocess.run(
        ["git", "-C", repo, "rev-parse", "--absolute-git-dir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    checked_out = subprocess.run(
        ["git", f"--git-dir={git_dir}", "symbolic-ref", "-q", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    bare = git("rev-parse", "--is-bare-repository") == "true"
    if not bare and checked_out == f"refs/heads/{branch}":
        raise BuildError(
            f"--git: branch {branch!r} is checked out in {repo}; expected a branch of its "
            "own for the built collection (it replaces the branch's files)"
        )
    with tempfile.TemporaryDirectory() as scratch:
        env["GIT_INDEX_FILE"] = str(Path(scratch) / "index")
        git(f"--work-tree={tree}", "add", "--all", "--force", ".", ":(exclude)tests")
        tree_id = git("write-tree")
    parent = subprocess.run(
        ["git", f"--git-dir={git_dir}", "rev-parse", "--verify", "-q", f"refs/heads/{branch}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if parent and git("rev-parse", f"{parent}^{{tree}}") == tree_id:
        return parent
    message = f"flipback.flipback built from {head or 'an unversioned tree'}"
    commit = git("commit-tree", tree_id, *(["-p", parent] if parent else []), "-m", message)
    git("update-ref", f"refs/heads/{branch}", commit)
    return commit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build", help="output directory")
    parser.add_argument(
        "--git",
        metavar="REPO,BRANCH",
        help="also commit the collection as BRANCH of the git repository REPO (for installs "
        "from a git URL)",
    )
    args = parser.parse_args()
    try:
        out = args.out.resolve()
        artifact = build(out)
        if args.git:
            repo, _sep, branch = args.git.rpartition(",")
            if not repo or not branch:
                raise BuildError(f"--git: got {args.git!r}, expected REPO,BRANCH")
            tree = out / "collection" / "ansible_collections" / NAMESPACE / NAME
            commit = git_publish(tree, repo, branch, source_date())
            print(f"{repo},{branch} {commit}", file=sys.stderr)
    except BuildError as exc:
        print(f"collection build: {exc}", file=sys.stderr)
        return 1
    print(artifact)
    return 0


if __name__ == "__main__":
    sys.exit(main())
