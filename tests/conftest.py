"""Make the project's module_utils, library modules and bench scripts importable.

Ansible ships `module_utils/` next to a playbook as `ansible.module_utils.*` and
runs `library/*.py` as scripts; the tests reproduce both without installing
anything: the module_utils directories (the deploy's and the sandbox harness's,
sandbox/module_utils) join the `ansible.module_utils` package path, and each library
module that runs (library/ and sandbox/library/) is loaded from its file under its own
name. The documentation-only ones (service_config, release_build, release_config) are
not: their action plugins, loaded by the tests with fakes.load_plugin, do the work.
"""

from __future__ import annotations

import sys
from pathlib import Path

import ansible.module_utils
import ansible.module_utils._internal
import ansible.module_utils.common.warnings
import pytest

ROOT = Path(__file__).resolve().parent.parent

# As ansible.cfg's module_utils: the deploy's directory, then the harness's.
for _utils in (ROOT / "module_utils", ROOT / "sandbox" / "module_utils"):
    if str(_utils) not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(str(_utils))

# bench/ is no package: its scripts import each other by name (bench.py imports load
# and plot), and so do the tests (`import load`).
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))


# tests/unit holds what the unit tests share (fakes.py), its loader among it.
if str(ROOT / "tests" / "unit") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "unit"))

from fakes import Ownership, load_file  # noqa: E402 (the paths above first)

# Each library module that runs under its own name, from its directory: the harness's,
# the deploy's (tests/unit/test_module_docs.py checks every module's kind).
_LIBRARIES = {
    "sandbox/library": ("sandbox_fleet", "sandbox_image"),
    "library": (
        "health_check",
        "service_status",
        "service_history",
        "status_report",
        "release",
    ),
}
for _library, _names in _LIBRARIES.items():
    for _name in _names:
        if _name not in sys.modules:
            load_file(_name, ROOT / _library / f"{_name}.py", register=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "controller: the test runs controller-side code (plugins), not a module"
    )


@pytest.fixture(autouse=True)
def _module_side(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Modules run as on a host, whatever controller code the session has imported.

    Importing any controller plugin (a callback, an action) makes Ansible treat the whole
    process as the controller, and a module's warn() then goes to the display instead of
    its result; and a module's warnings are kept process-wide until exit, so one test's
    warning would show up in the next test's result. Either way a module test would pass
    or fail depending on which tests ran before it.
    """
    warnings = ansible.module_utils.common.warnings
    monkeypatch.setattr(warnings, "_global_warnings", {})
    monkeypatch.setattr(warnings, "_global_deprecations", {})
    if request.node.get_closest_marker("controller") is None:
        monkeypatch.setattr(ansible.module_utils._internal, "is_controller", False)


@pytest.fixture
def ownership(monkeypatch: pytest.MonkeyPatch):
    """fakes.Ownership for one test: file owners as root sees them, root or not."""
    owners = Ownership().install(monkeypatch)
    yield owners
    owners.close()
