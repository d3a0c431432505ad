"""Each role's meta/argument_specs.yml and defaults/main.yml describe the same inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The deploy's roles and the sandbox harness's.
ROLES = sorted(
    p
    for roles in (ROOT / "roles", ROOT / "sandbox" / "roles")
    for p in roles.iterdir()
    if p.is_dir()
)


def _load(path: Path) -> dict:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_defaults_and_argument_specs_match(role: Path) -> None:
    defaults = _load(role / "defaults" / "main.yml")
    options = _load(role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(options), "inputs differ between defaults and specs"
    for name, spec in options.items():
        assert name.startswith(role.name + "_"), f"{name} lacks the role prefix"
        assert spec.get("description"), f"{name} has no description"
        if "default" in spec:
            assert spec["default"] == defaults[name], f"{name}: spec and defaults disagree"
