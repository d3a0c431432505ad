"""Unit tests of stopped, rebooted and rebuilt sandbox machines (issue #12).

A machine's state is its overlay layer: a stopped machine is booted again on it, a
reboot keeps it, and only a rebuild (asked for, or forced by a changed image or subnet,
or a half-built layer) throws it away, saying so. The planning is tested as a table;
the order of operations against FakeHost, the in-memory controller of
test_flipback_sandbox.py.
"""

from __future__ import annotations

import signal

import pytest
from ansible.module_utils.flipback_sandbox import (
    LAYER_FILES,
    NSPAWN_RUNTIME_DIR,
    REBOOT_ASKED,
    REBUILD_ASKED,
    Fleet,
    MachineState,
    Plan,
    SandboxError,
    describe_config_change,
    describe_plan,
    plan_present,
)
from test_flipback_sandbox import FakeHost, fleet_spec, machine_pids, up

STOPPED = "it was stopped (its systemd-nspawn is not running)"
HUNG = (
    "its systemd-nspawn runs but the machine does not answer on port 22 "
    "(or lost its mount or namespace): stopped and booted again"
)
HALF_BUILT = (
    "it was left half-built by an interrupted run (its layer lacks "
    "etc/ssh/ssh_host_ed25519_key.pub or root/.ssh/authorized_keys or etc/hosts): "
    "nothing on it to keep"
)
DATA = "srv/hello/shared/data.txt"


def running(name, pid):
    return MachineState(
        name=name,
        pid=pid,
        mounted=True,
        netns=True,
        dir_exists=True,
        ssh_open=True,
        layer_intact=True,
    )


def stopped(name, **kwargs):
    """A machine whose nspawn is gone and whose layer is intact."""
    return MachineState(name=name, dir_exists=True, layer_intact=True, **kwargs)


# =========================================================================== planning

R1, R2 = running("sandbox-1", 10), running("sandbox-2", 11)


@pytest.mark.parametrize(
    ("observed", "change", "rebuild", "reboot", "expected"),
    [
        pytest.param(
            {"sandbox-1": R1, "sandbox-2": stopped("sandbox-2", mounted=True, netns=True)},
            "",
            [],
            [],
            {"keep": ["sandbox-1"], "boot": {"sandbox-2": STOPPED}},
            id="powered-off-inside-mount-and-netns-left",
        ),
        pytest.param(
            {"sandbox-1": stopped("sandbox-1"), "sandbox-2": stopped("sandbox-2")},
            "",
            [],
            [],
            {"boot": {"sandbox-1": STOPPED, "sandbox-2": STOPPED}},
            id="controller-rebooted-only-layers-left",
        ),
        pytest.param(
            {
                "sandbox-1": R1,
                "sandbox-2": stopped("sandbox-2", pid=11, mounted=True, netns=True),
            },
            "",
            [],
            [],
            {"keep": ["sandbox-1"], "boot": {"sandbox-2": HUNG}},
            id="nspawn-runs-without-sshd",
        ),
        pytest.param(
            {"sandbox-1": R1, "sandbox-2": stopped("sandbox-2", pid=11, mounted=True)},
            "",
            [],
            [],
            {"keep": ["sandbox-1"], "boot": {"sandbox-2": HUNG}},
            id="nspawn-runs-without-its-namespace",
        ),
        pytest.param(
            {"sandbox-1": R1, "sandbox-2": MachineState("sandbox-2", dir_exists=True)},
            "",
            [],
            [],
            {"keep": ["sandbox-1"], "rebuild": {"sandbox-2": HALF_BUILT}},
            id="half-built-layer-is-rebuilt",
        ),
        pytest.param(
            {"sandbox-1": R1, "sandbox-2": stopped("sandbox-2")},
            "its image changed from 'a' to 'b'",
            [],
            [],
            {
                "rebuild": {
                    "sandbox-1": "its image changed from 'a' to 'b'",
                    "sandbox-2": "its image changed from 'a' to 'b'",
                }
            },
            id="config-change-rebuilds-stopped-ones-too",
        ),
        pytest.param(
            {"sandbox-1": R1, "sandbox-2": R2},
            "",
            [],
            ["sandbox-1", "sandbox-2"],
            {"reboot": {"sandbox-1": REBOOT_ASKED, "sandbox-2": REBOOT_ASKED}},
            id="reboot-all",
        ),
        pytest.param(
            {"sandbox-1": R1, "sandbox-2": R2},
            "",
            [],
            ["sandbox-2"],
            {"keep": ["sandbox-1"], "reboot": {"sandbox-2": REBOOT_ASKED}},
            id="reboot-one",
        ),
        pytest.param(
            {"sandbox-1": R1, "sandbox-2": stopped("sandbox-2")},
            "",
            [],
            ["sandbox-1", "sandbox-2"],
            {"reboot": {"sandbox-1": REBOOT_ASKED}, "boot": {"sandbox-2": STOPPED}},
            id="reboot-of-a-stopped-one-is-a-boot",
        ),
        pytest.param(
            {"sandbox-1": R1},
            "",
            [],
            ["sandbox-1", "sandbox-2"],
            {"reboot": {"sandbox-1": REBOOT_ASKED}, "create": {"sandbox-2": "it did not exist"}},
            id="reboot-of-a-missing-one-is-a-create",
        ),
        pytest.param(
            {"sandbox-1": R1, "sandbox-2": stopped("sandbox-2")},
            "",
            ["sandbox-1", "sandbox-2"],
            [],
            {"rebuild": {"sandbox-1": REBUILD_ASKED, "sandbox-2": REBUILD_ASKED}},
            id="rebuild-asked-running-and-stopped",
        ),
        pytest.param(
            {"sandbox-1": R1, "sandbox-2": R2},
            "",
            ["sandbox-2"],
            ["sandbox-1", "sandbox-2"],
            {"reboot": {"sandbox-1": REBOOT_ASKED}, "rebuild": {"sandbox-2": REBUILD_ASKED}},
            id="rebuild-wins-over-reboot",
        ),
        pytest.param(
            {"sandbox-1": R1},
            "its subnet changed",
            ["sandbox-1", "sandbox-2"],
            [],
            {"rebuild": {"sandbox-1": REBUILD_ASKED}, "create": {"sandbox-2": "it did not exist"}},
            id="rebuild-asked-names-the-request-before-the-config",
        ),
        pytest.param(
            {"sandbox-1": R1, "sandbox-2": R2, "sandbox-3": stopped("sandbox-3")},
            "",
            [],
            ["sandbox-1", "sandbox-2"],
            {
                "reboot": {"sandbox-1": REBOOT_ASKED, "sandbox-2": REBOOT_ASKED},
                "remove": {"sandbox-3": "the fleet has 2 machine(s)"},
            },
            id="beyond-size-removed-not-rebooted",
        ),
    ],
)
def test_plan_present_boot_reboot_rebuild(observed, change, rebuild, reboot, expected):
    plan = plan_present(fleet_spec(size=2), observed, change, rebuild=rebuild, reboot=reboot)

    actions = ("create", "boot", "reboot", "rebuild", "remove")
    actual = {a: {n: plan.reasons[n] for n in getattr(plan, a)} for a in actions}
    assert actual == {a: {} for a in actions} | {k: v for k, v in expected.items() if k != "keep"}
    assert plan.keep == expected.get("keep", [])
    # Every machine lands in exactly one list, and only the kept ones need no reason.
    everything = [n for a in ("keep", *actions) for n in getattr(plan, a)]
    assert sorted(everything) == sorted({*observed, "sandbox-1", "sandbox-2"})
    assert set(plan.reasons) == set(everything) - set(plan.keep)
    assert plan.changes is any(actual.values())


@pytest.mark.parametrize(
    ("recorded", "change"),
    [
        pytest.param(None, "", id="never-recorded"),
        pytest.param({"subnet": "10.213.1.0/24", "image": "/i/a"}, "", id="same"),
        pytest.param(
            {"subnet": "10.213.1.0/24", "image": "/i/old"},
            "its image changed from '/i/old' to '/i/a'",
            id="image",
        ),
        pytest.param(
            {"subnet": "10.213.9.0/24", "image": "/i/old"},
            "its image changed from '/i/old' to '/i/a'; "
            "its subnet changed from '10.213.9.0/24' to '10.213.1.0/24'",
            id="both",
        ),
        pytest.param(
            {"image": "/i/a"},
            "its subnet changed from None to '10.213.1.0/24'",
            id="key-missing",
        ),
    ],
)
def test_describe_config_change(recorded, change):
    assert describe_config_change(recorded, {"subnet": "10.213.1.0/24", "image": "/i/a"}) == change


@pytest.mark.parametrize(
    ("plan", "applied", "msg"),
    [
        pytest.param(Plan(), True, "no machine to change", id="empty"),
        pytest.param(
            Plan(keep=["s-1", "s-2"]), True, "s-1, s-2 running, kept as is", id="kept-only"
        ),
        pytest.param(
            Plan(keep=["s-1"], boot=["s-2"], reasons={"s-2": "it was stopped"}),
            True,
            "s-2 booted again with its state: it was stopped; s-1 running, kept as is",
            id="booted",
        ),
        pytest.param(
            Plan(reboot=["s-1"], rebuild=["s-2"], reasons={"s-1": "r1", "s-2": "r2"}),
            True,
            "s-1 rebooted with its state: r1; s-2 REBUILT from the image, its state discarded: r2",
            id="rebooted-and-rebuilt",
        ),
        pytest.param(
            Plan(create=["s-1"], remove=["s-3"], reasons={"s-1": "new", "s-3": "size"}),
            False,
            "s-1 to be created: new; s-3 to be removed: size",
            id="check-mode-says-to-be",
        ),
    ],
)
def test_describe_plan(plan, applied, msg):
    assert describe_plan(plan, applied=applied) == msg


# =========================================================================== Fleet


@pytest.fixture
def host():
    return FakeHost()


def names_called(host, *names):
    return [(name, args) for name, args in host.calls if name in names]


def write_data(host, spec):
    """What a deploy leaves on each machine: a file in its layer."""
    for machine in spec.machines():
        host.write_file(f"{machine.root}/{DATA}", f"data of {machine.name}\n")


def address_of(spec, name):
    return spec.machine(int(name.rsplit("-", 1)[1])).address


def power_off_inside(host, spec, name):
    """`systemctl poweroff` in the machine: nspawn exits, mount and namespace stay."""
    host.kill_machine(name)
    host.sshd_from.pop(address_of(spec, name), None)


def controller_rebooted(host, spec, name):
    """The controller rebooted: every process, mount, namespace, link and cgroup is
    gone; only the files under /var/lib stay."""
    host.procs.clear()
    host.mounts.clear()
    host.netns.clear()
    host.links.clear()
    host.addresses.clear()
    host.cgroup_dirs.clear()
    host.sshd_from.clear()


def nspawn_hung(host, spec, name):
    """nspawn still runs but the machine never answers on port 22."""
    del host.sshd_from[address_of(spec, name)]


@pytest.mark.parametrize(
    ("stop", "booted", "reason"),
    [
        pytest.param(power_off_inside, ["sandbox-2"], STOPPED, id="powered-off-inside"),
        pytest.param(
            controller_rebooted, ["sandbox-1", "sandbox-2"], STOPPED, id="controller-rebooted"
        ),
        pytest.param(nspawn_hung, ["sandbox-2"], HUNG, id="nspawn-hung"),
    ],
)
def test_present_boots_a_stopped_machine_on_its_own_layer(host, stop, booted, reason):
    spec = fleet_spec(size=2)
    up(host, spec)
    write_data(host, spec)
    before = machine_pids(host)
    uppers = {m.name: dict(host.files) for m in spec.machines()}
    stop(host, spec, "sandbox-2")
    host.reset_calls()

    result = Fleet(spec, host).present(check_mode=False)

    assert result["changed"] is True
    assert result["booted"] == booted
    assert (result["created"], result["rebooted"], result["rebuilt"], result["removed"]) == (
        [],
        [],
        [],
        [],
    )
    assert result["reasons"] == dict.fromkeys(booted, reason)
    assert result["warnings"] == []
    for name in booted:
        assert f"{name} booted again with its state: {reason}" in result["msg"]
    # The layers are untouched: same data, same host key, nothing removed or regenerated.
    for machine in spec.machines():
        assert host.read_text(f"{machine.root}/{DATA}") == f"data of {machine.name}\n"
        for rel in LAYER_FILES:
            path = f"{machine.upper}/{rel}"
            assert host.files[path] == uppers[machine.name][path]
    assert not any(name == "rmtree" for name, _ in host.calls)
    assert not any(argv[0] == "ssh-keygen" for argv in host.commands())
    assert not any(argv[0] == "umount" for argv in host.commands())
    # Each booted machine runs again, mounted on its own upper dir, in a new namespace.
    pids = machine_pids(host)
    assert set(pids) == {"sandbox-1", "sandbox-2"}
    for machine in spec.machines():
        assert host.mounts[machine.root] == (spec.image, machine.upper)
        assert (pids[machine.name] == before[machine.name]) is (machine.name not in booted)
    assert [args[0] for _, args in names_called(host, "start_nspawn")] == booted
    assert host.netns == {"sandbox-1", "sandbox-2"}
    assert {"sandbox-br", "vsandbox-1", "vsandbox-2"} <= host.links
    assert host.read_text(spec.known_hosts) == (
        "10.213.1.11 ssh-ed25519 AAAAsandbox-1\n10.213.1.12 ssh-ed25519 AAAAsandbox-2\n"
    )
    assert set(result["timings"]) == {"stop", "boot", "total"}
    # And a second run has nothing to do.
    again = Fleet(spec, host).present(check_mode=False)
    assert (again["changed"], again["kept"]) == (False, ["sandbox-1", "sandbox-2"])


def test_present_after_a_controller_reboot_checks_the_subnet_and_remounts(host):
    spec = fleet_spec(size=1)
    up(host, spec)
    controller_rebooted(host, spec, "sandbox-1")
    host.reset_calls()

    Fleet(spec, host).present(check_mode=False)

    machine = spec.machine(1)
    mount = [
        "mount",
        "-t",
        "overlay",
        "overlay",
        "-o",
        f"lowerdir={spec.image},upperdir={machine.upper},workdir={machine.work}",
        machine.root,
    ]
    assert mount in host.commands()
    assert "interface_networks" in [name for name, _ in host.calls]
    assert host.mounts[NSPAWN_RUNTIME_DIR] is None
    assert host.addresses["sandbox-br"] == {"10.213.1.1/24"}


def test_boot_again_order_of_operations(host):
    """Stop (if nspawn still runs), then the old network and cgroups go, then the
    network is made again on the current bridge, then nspawn starts, then the wait."""
    spec = fleet_spec(size=2)
    up(host, spec)
    nspawn_hung(host, spec, "sandbox-2")
    old_pid = machine_pids(host)["sandbox-2"]
    host.reset_calls()

    Fleet(spec, host).present(check_mode=False)

    steps = []
    for name, args in host.calls:
        if name == "signal":
            steps.append(("signal", args[0], args[1]))
        elif name == "run" and args[0][:3] in (["ip", "netns", "del"], ["ip", "netns", "add"]):
            steps.append(tuple(args[0][:4]))
        elif name == "run" and args[0][0] == "mount":
            steps.append(("mount",))
        elif name == "remove_cgroups":
            steps.append(("remove_cgroups", *args[0]))
        elif name in ("start_nspawn", "ssh_run_many"):
            steps.append((name,))
    machine = "sandbox-2"
    assert steps == [
        ("signal", old_pid, signal.SIGTERM),
        ("ip", "netns", "del", machine),
        (
            "remove_cgroups",
            f"/sys/fs/cgroup/unified/flipback/sandbox/{machine}",
            f"/sys/fs/cgroup/systemd/flipback/sandbox/{machine}",
        ),
        ("ip", "netns", "add", machine),
        ("start_nspawn",),
        ("ssh_run_many",),
    ]
    # The mount outlived nspawn: it is used as it is, not made again.
    assert ("mount",) not in steps


@pytest.mark.parametrize(
    ("machines", "rebooted", "kept"),
    [
        pytest.param(None, ["sandbox-1", "sandbox-2"], [], id="all"),
        pytest.param(["sandbox-2"], ["sandbox-2"], ["sandbox-1"], id="one"),
        pytest.param(["sandbox-2", "sandbox-1"], ["sandbox-1", "sandbox-2"], [], id="index-order"),
    ],
)
def test_restarted_reboots_running_machines_keeping_their_layer(host, machines, rebooted, kept):
    spec = fleet_spec(size=2)
    up(host, spec)
    write_data(host, spec)
    before = machine_pids(host)
    host.reset_calls()

    result = Fleet(spec, host, stop_timeout=15).restarted(check_mode=False, machines=machines)

    assert result["changed"] is True
    assert (result["rebooted"], result["kept"]) == (rebooted, kept)
    assert (result["booted"], result["created"], result["rebuilt"]) == ([], [], [])
    assert result["reasons"] == dict.fromkeys(rebooted, REBOOT_ASKED)
    assert result["warnings"] == []
    # One clean shutdown for all of them (SIGTERM to nspawn), before any boot.
    signals = [args[:2] for name, args in host.calls if name == "signal"]
    assert signals == [(before[n], signal.SIGTERM) for n in rebooted]
    first_start = next(i for i, (n, _) in enumerate(host.calls) if n == "start_nspawn")
    last_signal = max(i for i, (n, _) in enumerate(host.calls) if n == "signal")
    assert last_signal < first_start
    pids = machine_pids(host)
    for machine in spec.machines():
        assert host.read_text(f"{machine.root}/{DATA}") == f"data of {machine.name}\n"
        assert (pids[machine.name] != before[machine.name]) is (machine.name in rebooted)
    assert not any(name == "rmtree" for name, _ in host.calls)
    assert not any(argv[0] in ("ssh-keygen", "umount") for argv in host.commands())
    # The fake machines stop 2 s after SIGTERM and answer 1 s after they start.
    assert result["timings"]["stop"] == pytest.approx(2.0, abs=0.11)
    assert result["timings"]["boot"] == pytest.approx(1.0, abs=0.21)
    # Nothing is left to do for present afterwards.
    assert Fleet(spec, host).present(check_mode=False)["changed"] is False


def test_restarted_boots_stopped_ones_and_reboots_running_ones(host):
    spec = fleet_spec(size=3)
    up(host, spec)
    power_off_inside(host, spec, "sandbox-2")
    host.reset_calls()

    result = Fleet(spec, host).restarted(check_mode=False)

    assert (result["rebooted"], result["booted"]) == (["sandbox-1", "sandbox-3"], ["sandbox-2"])
    assert [args[0] for name, args in host.calls if name == "start_nspawn"] == [
        "sandbox-1",
        "sandbox-2",
        "sandbox-3",
    ]


def test_restarted_kills_a_machine_that_does_not_power_off_and_says_so(host):
    spec = fleet_spec(size=1)
    up(host, spec)
    write_data(host, spec)
    host.term_delay = None
    start = host.clock

    result = Fleet(spec, host, stop_timeout=15).restarted(check_mode=False)

    assert result["rebooted"] == ["sandbox-1"]
    kills = [args[2] for name, args in host.calls if name == "signal" and args[1] == signal.SIGKILL]
    assert len(kills) == 1
    assert start + 15 <= kills[0] < start + 15.2
    assert result["warnings"] == [
        "sandbox-1 did not power off within 15s and was killed (SIGKILL), like pulling "
        "its plug: writes it had not synced may be lost"
    ]
    assert host.read_text(f"{spec.machine(1).root}/{DATA}") == "data of sandbox-1\n"


def test_restarted_check_mode_reports_without_changes(host):
    spec = fleet_spec(size=2)
    up(host, spec)

    result = Fleet(spec, host).restarted(check_mode=True, machines=["sandbox-1"])

    assert result["changed"] is True
    assert (result["rebooted"], result["kept"]) == (["sandbox-1"], ["sandbox-2"])
    assert result["msg"] == (
        f"sandbox-1 to be rebooted with its state: {REBOOT_ASKED}; sandbox-2 running, kept as is"
    )
    assert result["timings"] == {}
    assert host.mutations == []


@pytest.mark.parametrize(
    ("machines", "rebuilt", "kept"),
    [
        pytest.param(None, ["sandbox-1", "sandbox-2"], [], id="all"),
        pytest.param(["sandbox-1"], ["sandbox-1"], ["sandbox-2"], id="one"),
    ],
)
def test_present_rebuild_asked_discards_the_layer_without_a_warning(host, machines, rebuilt, kept):
    spec = fleet_spec(size=2)
    up(host, spec)
    write_data(host, spec)

    result = Fleet(spec, host).present(check_mode=False, rebuild=True, machines=machines)

    assert (result["rebuilt"], result["kept"]) == (rebuilt, kept)
    assert result["reasons"] == dict.fromkeys(rebuilt, REBUILD_ASKED)
    assert result["warnings"] == []
    for name in rebuilt:
        assert f"{name} REBUILT from the image, its state discarded" in result["msg"]
    for machine in spec.machines():
        assert host.exists(f"{machine.root}/{DATA}") is (machine.name in kept)
    assert ["rmtree", (spec.machine(1).dir,)] in [[n, a] for n, a in host.calls]


def test_present_config_change_rebuilds_a_stopped_machine_with_a_warning(host):
    up(host, fleet_spec(size=1))
    power_off_inside(host, fleet_spec(size=1), "sandbox-1")
    spec = fleet_spec(size=1, image="/var/lib/flipback/images/ba9876543210")

    result = Fleet(spec, host).present(check_mode=False)

    reason = (
        "its image changed from '/var/lib/flipback/images/0123456789ab' to "
        "'/var/lib/flipback/images/ba9876543210'"
    )
    assert (result["rebuilt"], result["booted"]) == (["sandbox-1"], [])
    assert result["reasons"] == {"sandbox-1": reason}
    assert result["warnings"] == [
        f"sandbox-1 was rebuilt from the image because {reason}: everything written on it "
        "since it was built is gone"
    ]


def test_boot_again_gives_back_the_fleet_key_and_keeps_other_keys(host):
    spec = fleet_spec(size=1)
    up(host, spec)
    machine = spec.machine(1)
    keys = f"{machine.root}/root/.ssh/authorized_keys"
    host.write_file(keys, "ssh-ed25519 OTHER someone", 0o600)
    power_off_inside(host, spec, "sandbox-1")

    Fleet(spec, host).present(check_mode=False)

    assert host.read_text(keys) == "ssh-ed25519 OTHER someone\n" + host.read_text(spec.key + ".pub")


def test_boot_again_leaves_authorized_keys_alone_when_the_key_is_there(host):
    spec = fleet_spec(size=1)
    up(host, spec)
    power_off_inside(host, spec, "sandbox-1")
    host.reset_calls()

    Fleet(spec, host).present(check_mode=False)

    written = [args[0] for name, args in host.calls if name == "write_file"]
    assert not any(path.endswith("authorized_keys") for path in written)


def test_boot_again_failure_says_a_retry_keeps_the_state(host):
    spec = fleet_spec(size=1)
    up(host, spec)
    power_off_inside(host, spec, "sandbox-1")
    host.boot_delay = None

    with pytest.raises(SandboxError) as err:
        Fleet(spec, host, boot_timeout=5).present(check_mode=False)

    assert err.value.retryable is True
    assert "boots machines that are not running again, keeping their state" in err.value.msg
    assert "-e sandbox_rebuild=true" in err.value.msg


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(
            lambda f: f.restarted(check_mode=False, machines=["sandbox-3"]),
            "machines: got ['sandbox-3'], expected one or more of this fleet's machines "
            "(sandbox-1, sandbox-2), or no list for all of them; not in the fleet: "
            "sandbox-3. Nothing was changed",
            id="unknown-machine",
        ),
        pytest.param(
            lambda f: f.restarted(check_mode=False, machines=[]),
            "machines: got [], expected one or more of this fleet's machines",
            id="empty-list",
        ),
        pytest.param(
            lambda f: f.present(check_mode=False, rebuild=True, machines=["other-1"]),
            "machines: got ['other-1'], expected one or more of this fleet's machines",
            id="rebuild-unknown",
        ),
        pytest.param(
            lambda f: f.present(check_mode=False, machines=["sandbox-1"]),
            "machines: got ['sandbox-1'] with state=present and no rebuild; expected it "
            "only with state=restarted or rebuild=true",
            id="machines-without-rebuild",
        ),
    ],
)
def test_machines_are_checked_before_any_change(host, call, message):
    spec = fleet_spec(size=2)
    up(host, spec)

    with pytest.raises(SandboxError) as err:
        call(Fleet(spec, host))

    assert err.value.msg.startswith(message)
    assert err.value.details["field"] == "machines"
    assert err.value.retryable is False
    assert host.mutations == []
