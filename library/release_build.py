"""Documentation only: build a service's release artifact once per content.

The action plugin of the same name (plugins/action/release_build.py) does the work on the
controller, in-process; no run executes this file as a module. ansible-doc reads
DOCUMENTATION, EXAMPLES and RETURN from here, as ansible-core's own debug and set_fact.
"""

DOCUMENTATION = r"""
---
module: release_build
short_description: Build a flipback release artifact (source at a git ref + a wheelhouse)
description:
  - Runs on the controller. Mirrors O(source) (a git repository path or URL), resolves
    O(ref) to a commit, takes the service directory O(subdir) at that commit with
    C(git archive), downloads every dependency as a wheel (the hosts have no network),
    and writes one deterministic tar under O(cache_dir).
  - The dependencies come from, first found first, C(uv.lock) in the service
    directory (its locked non-dev dependencies, exported by C(uv export --frozen), with
    their hashes), a requirements file (O(requirements), else C(requirements.txt);
    C(--hash=) pins are enforced), else C([project] dependencies) of C(pyproject.toml).
    When none of the downloaded wheels is uvicorn, C(uvicorn==0.54.0) is added (and
    reported in RV(added)).
  - A service whose C(pyproject.toml) has a C([build-system]) is a package (for example
    a C(src/) layout). Its own wheel is built from the tree at the commit (with
    C(SOURCE_DATE_EPOCH) set to the commit time), shipped in both artifacts, and
    installed into the release's virtualenv with C(--no-deps). It is in neither the
    release id nor RV(deps_key), so a code change still reuses a venv.
  - With O(targets), one build per distinct platform of the hosts (CPython version,
    glibc, architecture), each with its own wheels, artifact and id; RV(targets) holds
    them by target key and RV(hosts) says which is each host's.
  - A build that cannot succeed (say, a dependency whose Requires-Python excludes the
    hosts' Python) fails with pip's reasons whole and C(retryable=false); only network
    failures are retryable.
  - The release id is C(<commit time UTC>-<hash of the source tree and wheels>), so the
    same content gives the same id and the same artifact (C(changed=false)).
  - Changes nothing on any host. Check mode still builds (the artifact is a cache on
    the controller), so that a dry run can name the release that would go live.
  - Credentials in O(source) (C(https://user:token@host/x.git)) are never stored or
    shown. Git gets them from its environment through a credential helper; the mirror
    under O(cache_dir) is cloned from and configured with the URL without them; every
    message and result shows that redacted URL (returned as RV(source)), and the
    artifact's metadata holds no URL at all. A mirror an older version configured with
    credentials is cleaned.
options:
  service:
    description: Service name (names the artifact).
    type: str
    required: true
  source:
    description:
      - Git repository (path or URL) reachable from the controller.
      - An http(s) URL may carry credentials, C(https://user:token@host/x.git) or
        C(https://token@host/x.git); they are used, never stored or shown. A password
        in an ssh:// URL is dropped (ssh takes none from git; use a key).
    type: str
    required: true
  subdir:
    description: Directory of the service inside the repository; empty for the root.
    type: str
    default: ""
  ref:
    description: Branch, tag or commit to build.
    type: str
    default: HEAD
  cache_dir:
    description: Controller directory for git mirrors, wheelhouses and artifacts.
    type: path
    default: ~/.cache/flipback
  pip:
    description: pip command used to download wheels (its Python must match the hosts').
    type: list
    elements: str
    default: []
  requirements:
    description:
      - A requirements file to take the dependencies from, as a relative path inside the
        service directory (for example C(requirements/prod.txt)). Named, it is used even
        when the service has a C(uv.lock); a missing file fails the build.
      - Empty looks for C(uv.lock), then C(requirements.txt), then takes
        C(pyproject.toml)'s dependencies.
    type: str
    default: ""
  targets:
    description:
      - The platform of each target host, by host name, as the role's probe reports it
        (one line of JSON from the host's C(/usr/bin/python3) with C(implementation),
        C(python) such as C(3.13), C(machine) such as C(x86_64), C(libc) such as
        C(glibc 2.41)). Hosts that report the same platform are one target.
      - The build is made once per distinct target, with wheels for that target's
        CPython, glibc and architecture, whatever the controller runs. A dependency with
        no wheel for a target is built here from its source when that gives a pure-Python
        wheel; otherwise the build fails naming the package and the target.
      - Empty builds for the controller's own platform, with the result's keys at the top
        level (no RV(targets), RV(hosts)).
    type: dict
    default: {}
author: flipback (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Build hello at v2
  release_build:
    service: hello
    source: https://git.example.com/acme/services.git
    subdir: hello
    ref: v2
  delegate_to: localhost
  run_once: true
  register: deploy_build
"""

RETURN = r"""
source:
  description: O(source) without its credentials (an ssh:// URL keeps its user), as
    recorded in manifests.
  type: str
  returned: success
  sample: https://git.example.com/acme/services.git
id:
  description: Release id.
  type: str
  returned: success
  sample: 20261129T141500-3f2a9c1d0e
git_sha:
  description: Commit the ref resolved to.
  type: str
  returned: success
deps_key:
  description: Key of the dependency set (requirements and wheel hashes); releases with
    the same key can share a virtualenv.
  type: str
  returned: success
artifact:
  description: Path of the artifact on the controller.
  type: str
  returned: success
code_artifact:
  description: Path of the same release without its wheels (for hosts that reuse a venv).
  type: str
  returned: success
code_checksum:
  description: sha256 of the code-only artifact.
  type: str
  returned: success
code_b64:
  description:
    - The code-only artifact, base64 (up to 2 MiB; null if bigger). Returned by the
      controller action only.
  type: str
  returned: success
checksum:
  description: sha256 of the artifact.
  type: str
  returned: success
dependencies:
  description: Every dependency as downloaded, C(name==version), uvicorn included when
    added.
  type: list
  elements: str
  returned: success
  sample: ["fastapi==0.165.0", "starlette==0.48.0", "uvicorn==0.54.0"]
source_build:
  description: What every platform's build of this commit shares, C(<commit time>-<hash
    of the service tree and the dependencies asked for>); manifests record it, and the
    fleet-wide checks compare it, so hosts of different platforms run one build.
  type: str
  returned: success
  sample: 20261129T141500-8c01d2aa3e
target:
  description: The target key the wheels are for (C(cp313-glibc2.41-x86_64)); null for
    a build for the controller's own platform.
  type: str
  returned: success
targets:
  description: With O(targets), each target's build by target key, each with the keys
    this section lists (RV(id), RV(artifact), RV(checksum), RV(code_b64), RV(deps_key)
    ...); RV(source), RV(git_sha), C(ref), C(tree), C(commit_time),
    RV(source_build) and RV(project) are also at the top level.
  type: dict
  returned: success, with O(targets)
hosts:
  description: With O(targets), each host's target key.
  type: dict
  returned: success, with O(targets)
  sample: {web-1: cp311-glibc2.36-x86_64, web-2: cp313-glibc2.41-x86_64}
dependency_source:
  description: Where the dependencies came from, C(uv.lock), the requirements file's path
    (C(requirements.txt)) or C(pyproject.toml).
  type: str
  returned: success
  sample: uv.lock
added:
  description: What flipback added to the dependencies (uvicorn, when none of them was).
  type: list
  elements: str
  returned: success
  sample: ["uvicorn==0.54.0"]
project:
  description: File name of the service's own wheel shipped under C(project/) (a service
    with a C([build-system])); null otherwise.
  type: str
  returned: success
  sample: shop-1.0.0-py3-none-any.whl
elapsed:
  description: Seconds the module took.
  type: float
  returned: always
retryable:
  description: Whether running the same task again is safe and may succeed.
  type: bool
  returned: failure
"""
