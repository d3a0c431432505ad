"""Every module in library/ and sandbox/library/ documents itself completely: ansible-doc
can read it.

A module runs (it has a main()), or it is documentation only: an action plugin of the
same name in plugins/action/ does the work on the controller and validates the options
the module documents (ansible-core's debug and set_fact are so). Either way the
documented options are the argument spec that is really checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from fakes import action, load_file, load_plugin

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "library"
FRAGMENTS = ROOT / "plugins" / "doc_fragments"
ACTIONS = ROOT / "plugins" / "action"
# The deploy's modules, then the sandbox harness's.
MODULES = sorted(LIBRARY.glob("*.py")) + sorted((ROOT / "sandbox" / "library").glob("*.py"))


def _docs(path: Path) -> dict[str, str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in (
                    "DOCUMENTATION",
                    "EXAMPLES",
                    "RETURN",
                ):
                    found[target.id] = node.value.value
    return found


def _fragment_options(name: str) -> dict:
    """The options of plugins/doc_fragments/<name>.py, as ansible-doc reads them."""
    module = load_file(f"_fragment_{name}", FRAGMENTS / f"{name}.py")
    return yaml.safe_load(module.ModuleDocFragment.DOCUMENTATION)["options"]


def _documentation(path: Path) -> dict:
    """DOCUMENTATION with its fragments' options merged in, as ansible-doc shows it."""
    documentation = yaml.safe_load(_docs(path)["DOCUMENTATION"])
    for name in documentation.get("extends_documentation_fragment", []):
        shared = _fragment_options(name)
        assert not set(shared) & set(documentation.get("options", {})), name
        documentation.setdefault("options", {}).update(shared)
    return documentation


def _options(path: Path) -> dict:
    return _documentation(path).get("options", {})


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_module_documentation_parses_and_matches_the_module(path):
    docs = _docs(path)
    assert set(docs) == {"DOCUMENTATION", "EXAMPLES", "RETURN"}
    documentation = _documentation(path)
    assert documentation["module"] == path.stem
    assert documentation["short_description"]
    for name, option in documentation.get("options", {}).items():
        assert option.get("description"), f"option {name} has no description"
        assert option.get("type"), f"option {name} has no type"
    examples = yaml.safe_load(docs["EXAMPLES"])
    assert isinstance(examples, list) and examples
    returned = yaml.safe_load(docs["RETURN"])
    assert isinstance(returned, dict) and "elapsed" in returned


class _Captured(Exception):
    def __init__(self, spec: dict) -> None:
        super().__init__("argument_spec captured")
        self.spec = spec


def _functions(path: Path) -> set[str]:
    """Names of the functions the file defines at its top level."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def _runs_its_module(plugin: Path) -> bool:
    """Whether the action plugin hands the task to a module (self._execute_module)."""
    return "_execute_module" in {
        node.attr
        for node in ast.walk(ast.parse(plugin.read_text()))
        if isinstance(node, ast.Attribute)
    }


def _argument_spec(path: Path, monkeypatch) -> dict:
    """The argument_spec that is checked: the module's, taken from its AnsibleModule(...)
    call in main(); for a documentation-only module, its action plugin's, taken from its
    validate_argument_spec(...) call in run()."""
    if "main" not in _functions(path):
        return _action_argument_spec(path.stem, monkeypatch)
    module = load_file(f"_doccheck_{path.stem}", path)

    def capture(*, argument_spec, **_kwargs):
        raise _Captured(argument_spec)

    monkeypatch.setattr(module, "AnsibleModule", capture)
    with pytest.raises(_Captured) as captured:
        module.main()
    # Options its action plugin reads on the controller and never sends to the host.
    plugin = ACTIONS / f"{path.stem}.py"
    controller = (
        getattr(load_plugin(path.stem), "CONTROLLER_OPTIONS", {}) if plugin.exists() else {}
    )
    return {**captured.value.spec, **controller}


def _action_argument_spec(name: str, monkeypatch) -> dict:
    plugin = load_plugin(name)

    def capture(self, argument_spec=None, **_kwargs):
        raise _Captured(argument_spec)

    monkeypatch.setattr(plugin.ActionModule, "validate_argument_spec", capture)
    with pytest.raises(_Captured) as captured:
        action(plugin, {}).run(task_vars={})
    return captured.value.spec


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_a_module_runs_or_is_documentation_for_its_action(path):
    """A module with a main() is run: an action plugin of its name, if any, hands the task
    to it. A module without one is documentation only: an action plugin of its name does
    the work, and the file has no code for ansible to ship."""
    plugin = ACTIONS / f"{path.stem}.py"
    if "main" in _functions(path):
        assert not plugin.exists() or _runs_its_module(plugin), (
            f"plugins/action/{path.stem}.py shadows the module: its main() never runs"
        )
        return
    assert plugin.exists(), f"{path.stem} has no main() and no action plugin to do its work"
    assert not _runs_its_module(plugin), f"plugins/action/{path.stem}.py runs a module of none"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert ast.get_docstring(tree), "say which action plugin does the work"
    code = [
        node
        for node in tree.body
        if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
        and not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant))
    ]
    assert code == [], "a documentation-only module holds its docstring and docs only"


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_documented_options_are_the_argument_spec(path, monkeypatch):
    documented = _options(path)
    spec = _argument_spec(path, monkeypatch)
    assert sorted(documented) == sorted(spec)
    for name, option in spec.items():
        assert documented[name]["type"] == option.get("type", "str"), name
        if "default" in option and option["default"] is not None:
            assert documented[name].get("default") == option["default"], name
        if "choices" in option:
            assert sorted(documented[name]["choices"]) == sorted(option["choices"]), name


def _dict_options(spec: dict, documented: dict, where: str = ""):
    """(path, spec suboptions, documented suboptions) of every dict option, nested too."""
    for name, option in spec.items():
        if option.get("options"):
            sub = documented.get(name, {}).get("suboptions") or {}
            yield f"{where}{name}", option["options"], sub
            yield from _dict_options(option["options"], sub, f"{where}{name}.")


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_documented_suboptions_are_the_argument_spec(path, monkeypatch):
    documented = _options(path)
    spec = _argument_spec(path, monkeypatch)
    # The options documented with suboptions are the dict options (none, for most).
    with_suboptions = {name for name, doc in documented.items() if doc.get("suboptions")}
    assert with_suboptions == {name for name, option in spec.items() if option.get("options")}
    for where, options, suboptions in _dict_options(spec, documented):
        assert sorted(suboptions) == sorted(options), where
        for name, option in options.items():
            doc = suboptions[name]
            assert doc.get("description"), f"{where}.{name} has no description"
            assert doc.get("type") == option.get("type", "str"), f"{where}.{name}"
            assert bool(doc.get("required")) == bool(option.get("required")), f"{where}.{name}"


def test_every_doc_fragment_is_used():
    used = {
        name
        for path in MODULES
        for name in _documentation(path).get("extends_documentation_fragment", [])
    }
    assert used == {p.stem for p in FRAGMENTS.glob("*.py")}
