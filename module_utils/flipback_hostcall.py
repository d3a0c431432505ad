"""How the release action reaches a host without a module payload: where each version of
flipback's host code lives, the command that runs a call there, and the one that
installs a version. The controller reads this file; the host runs the two scripts
(flipback_runner is the entry point BOOT imports).

Each version is the set of flipback's module_utils, named by a digest of their content,
installed once per host under RUNNER_HOME/<digest> (root's, 0755, code only, never a
secret) and compiled there, so a call imports cached bytecode instead of compiling a
payload's sources. BOOT answers `{"flipback_runner": "absent"}` when the version is not
installed; the action then sends INSTALL the version's zip and calls again.
"""

from __future__ import annotations

# Where each version of the host code lives on a host, one directory per digest.
RUNNER_HOME = "/var/lib/flipback/tools/runner"
# Installed versions kept on a host (the newest by install time); older ones are removed
# when another is installed.
RUNNER_KEEP = 8

# Run by the host's python3 (-I: no user site, no PYTHON* variables, no working
# directory on the path). argv: the version's directory, the package of the module_utils.
# The directory counts only when it is complete and belongs to this user.
BOOT = """\
import os, sys
home, package = sys.argv[1], sys.argv[2]
try:
    mark = os.stat(os.path.join(home, ".complete"))
except OSError:
    mark = None
if mark is None or mark.st_uid != os.geteuid():
    sys.stdout.write('{"flipback_runner": "absent"}')
    sys.exit(0)
sys.path.insert(0, home)
__import__(package + ".flipback_runner", fromlist=["main"]).main()
"""

# Run by the host's python3 with the version's zip on stdin. argv: RUNNER_HOME, digest.
# It unpacks into a private directory, compiles, marks it complete and renames it into
# place (a concurrent install of the same version wins or loses whole), then removes
# the oldest versions beyond RUNNER_KEEP and what an install that died half-way left.
INSTALL = """\
import compileall, io, json, os, shutil, sys, tempfile, time, zipfile
home, digest, keep = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.umask(0o022)
os.makedirs(home, mode=0o755, exist_ok=True)
final = os.path.join(home, digest)
if not os.path.isfile(os.path.join(final, ".complete")):
    tmp = tempfile.mkdtemp(prefix="." + digest + ".", dir=home)
    with zipfile.ZipFile(io.BytesIO(sys.stdin.buffer.read())) as archive:
        archive.extractall(tmp)
    if not compileall.compile_dir(tmp, quiet=1):
        shutil.rmtree(tmp, ignore_errors=True)
        sys.exit("flipback runner: the host code did not compile")
    open(os.path.join(tmp, ".complete"), "w").close()
    os.chmod(tmp, 0o755)
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isfile(os.path.join(final, ".complete")):
            raise
entries = [
    entry
    for entry in os.scandir(home)
    if entry.name != digest and entry.is_dir(follow_symlinks=False)
]
versions = sorted(
    (entry for entry in entries if not entry.name.startswith(".")),
    key=lambda entry: entry.stat(follow_symlinks=False).st_mtime,
    reverse=True,
)
for entry in versions[max(keep - 1, 0):]:
    shutil.rmtree(entry.path, ignore_errors=True)
# An install that died half-way leaves its private directory: gone after an hour (an
# install under way takes a second).
stale = time.time() - 3600
for entry in entries:
    if entry.name.startswith(".") and entry.stat(follow_symlinks=False).st_mtime < stale:
        shutil.rmtree(entry.path, ignore_errors=True)
sys.stdout.write(json.dumps({"flipback_runner": "installed", "home": final}))
"""
