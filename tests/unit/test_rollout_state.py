"""The rollout state (host fact flipback_rollout) as ansible-core keeps it, in real runs.

Every write goes through host facts (the release action's note_in_rollout, and
rollout_note): a set_fact of flipback_rollout would take precedence over every fact
noted after it and hide them. service_config starts each run with an empty state, so a
persistent fact cache never hands one run's state to the next.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from fakes import ROOT, action, load_plugin

rollout_note = load_plugin("rollout_note")
service_config = load_plugin("service_config")

SET_FACT = "ansible.builtin.set_fact"
SERVICES = [{"name": "web", "source": "/srv/git/web.git", "app": "app:app", "port": 8000}]


def test_rollout_note_merges_into_the_service_entry_and_keeps_the_others():
    known = {"web": {"release": "r2", "outcome": "staged"}, "api": {"outcome": "switched"}}
    plugin = action(rollout_note, {"service": "web", "state": {"outcome": "failed", "error": "e"}})
    plugin._templar = SimpleNamespace(template=lambda value: value)

    result = plugin.run(task_vars={"flipback_rollout": known})

    assert result["ansible_facts"]["flipback_rollout"] == {
        "web": {"release": "r2", "outcome": "failed", "error": "e"},
        "api": {"outcome": "switched"},
    }
    assert known["web"] == {"release": "r2", "outcome": "staged"}
    assert result["changed"] is False


def test_rollout_note_needs_a_service_and_a_state():
    plugin = action(rollout_note, {"state": {}})
    with pytest.raises(Exception, match="service"):
        plugin.run(task_vars={})


def test_service_config_starts_the_rollout_state_empty(monkeypatch):
    monkeypatch.setattr(service_config, "live_runs", lambda: {"controller": "c", "pids": [1]})

    result = action(service_config, {"services": SERVICES}).run(task_vars={})

    assert result["ansible_facts"] == {"flipback_rollout": {}}


def test_no_task_of_the_role_or_playbooks_sets_the_rollout_state_with_set_fact():
    found = []
    for path in [*ROOT.glob("roles/flipback/tasks/*.yml"), *ROOT.glob("playbooks/*.yml")]:
        stack = list(yaml.safe_load(path.read_text()) or [])
        while stack:
            task = stack.pop()
            if not isinstance(task, dict):
                continue
            for key in ("tasks", "block", "rescue", "always"):
                stack += task.get(key) or []
            facts = task.get("ansible.builtin.set_fact") or task.get("set_fact") or {}
            if "flipback_rollout" in facts:
                found.append(f"{path.relative_to(ROOT)}: {task.get('name')}")
    assert found == []


PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Start the run
      service_config:
        services: {services}
      when: start | bool
    - name: Note a failure of web
      rollout_note: {{service: web, state: {{outcome: staging failed}}}}
      when: fail | bool
    - name: The failure's flag, as the role's rescues set it
      ansible.builtin.set_fact:
        flipback_rollout_failed: true
      when: fail | bool
    - name: Note api, after the failure
      rollout_note: {{service: api, state: {{outcome: staged}}}}
      when: fail | bool
    - name: Say the state
      ansible.builtin.debug:
        msg: "STATE={{{{ flipback_rollout | default('none') | to_json }}}}"
"""


def run(tmp_path: Path, **flags: bool) -> dict | str:
    book = tmp_path / "book.yml"
    book.write_text(PLAYBOOK.format(services=json.dumps(SERVICES)))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_INVENTORY": "localhost,",
        "ANSIBLE_CONNECTION": "local",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
        # A persistent fact cache, as some users configure.
        "ANSIBLE_CACHE_PLUGIN": "jsonfile",
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp_path / "facts"),
        "FLIPBACK_TIMING_TOP": "0",
    }
    extra = json.dumps({name: value for name, value in flags.items()})
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), str(book), "-e", extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The yaml callback prints `msg: 'STATE={...}'`.
    said = proc.stdout.split("STATE=", 1)[1].split("\n", 1)[0].strip().rstrip("'\"")
    return "none" if said == "none" else json.loads(said)


def test_a_note_after_a_failure_on_the_same_host_is_kept_and_a_new_run_starts_empty(tmp_path):
    noted = run(tmp_path, start=True, fail=True)

    assert noted == {"web": {"outcome": "staging failed"}, "api": {"outcome": "staged"}}
    # The next run, with the same persistent fact cache: the state is cached ...
    assert run(tmp_path, start=False, fail=False) == noted
    # ... and the run's first task empties it.
    assert run(tmp_path, start=True, fail=False) == {}


def test_every_rescue_marks_the_rollout_stopped_before_it_notes_the_outcome():
    # A block's `when` applies to its rescue too; the outcome it reads is what the note
    # changes, so a task after the note would be skipped (the flag never set, and later
    # batches would switch after a failed canary).
    rescues = []
    for path in ROOT.glob("roles/flipback/tasks/*.yml"):
        for block in yaml.safe_load(path.read_text()) or []:
            rescue = block.get("rescue") if isinstance(block, dict) else None
            if not rescue:
                continue
            names = [
                next((k for k in task if k in ("rollout_note", SET_FACT)), "other")
                for task in rescue
            ]
            rescues.append((path.name, names))
    assert rescues, "no rescue found"
    for name, actions in rescues:
        if "rollout_note" in actions:
            assert actions[0] == SET_FACT, (name, actions)
