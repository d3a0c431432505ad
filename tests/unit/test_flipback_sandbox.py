"""Unit tests of sandbox/module_utils/flipback_sandbox.py: pure functions, then Fleet and Image
against FakeHost, an in-memory controller that records every call."""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import os
import posixpath
import signal
import subprocess

import pytest
from ansible.module_utils.flipback_sandbox import (
    IMAGE_FILES,
    IMAGE_MARKER,
    IMAGE_MASKED_UNITS,
    MACHINE_MEMORY_MIB,
    NSPAWN_RUNTIME_DIR,
    Fleet,
    FleetSpec,
    Image,
    ImageSpec,
    MachineState,
    SandboxError,
    cgroup_roots,
    check_memory,
    image_key,
    inotify_instances_needed,
    machine_cgroups,
    machine_index,
    mem_available_kib,
    overlapping_networks,
    parse_mountinfo,
    parse_nspawn_cmdline,
    parse_subnet,
    plan_absent,
    plan_present,
    validate_fleet_name,
    validate_packages,
    validate_size,
)

STATE_DIR = "/var/lib/flipback/sandbox"
IMAGE = "/var/lib/flipback/images/0123456789ab"
IMAGES_DIR = "/var/lib/flipback/images"


def fleet_spec(size=2, subnet="10.213.1.0/24", image=IMAGE, name="sandbox"):
    return FleetSpec(
        name=name,
        size=size,
        subnet=ipaddress.IPv4Network(subnet),
        image=image,
        state_dir=STATE_DIR,
    )


# =========================================================================== pure functions


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("a", id="one-letter"),
        pytest.param("sandbox", id="word"),
        pytest.param("a123456789", id="ten-chars"),
    ],
)
def test_validate_fleet_name_accepts(name):
    assert validate_fleet_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("Sandbox", id="uppercase"),
        pytest.param("1sandbox", id="starts-with-digit"),
        pytest.param("a1234567890", id="eleven-chars"),
        pytest.param("sand-box", id="dash"),
        pytest.param("sandbox\n", id="trailing-newline"),
        pytest.param(None, id="none"),
        pytest.param(7, id="int"),
    ],
)
def test_validate_fleet_name_rejects(name):
    with pytest.raises(SandboxError) as err:
        validate_fleet_name(name)
    assert err.value.msg.startswith("name: ")
    assert repr(name) in err.value.msg
    assert err.value.details == {"field": "name", "value": name}
    assert err.value.retryable is False


@pytest.mark.parametrize(
    "size",
    [pytest.param(1, id="min"), pytest.param(16, id="middle"), pytest.param(32, id="max")],
)
def test_validate_size_accepts(size):
    assert validate_size(size) == size


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(0, id="zero"),
        pytest.param(-1, id="negative"),
        pytest.param(33, id="above-max"),
        pytest.param(True, id="bool"),
        pytest.param("2", id="string"),
        pytest.param(2.0, id="float"),
    ],
)
def test_validate_size_rejects(size):
    with pytest.raises(SandboxError) as err:
        validate_size(size)
    assert err.value.msg.startswith(f"size: got {size!r}, ")
    assert err.value.details == {"field": "size", "value": size}


@pytest.mark.parametrize(
    ("text", "network"),
    [
        pytest.param("10.213.1.0/24", "10.213.1.0/24", id="ten-slash-24"),
        pytest.param("172.16.0.0/27", "172.16.0.0/27", id="smallest-allowed"),
        pytest.param("192.168.5.0/26", "192.168.5.0/26", id="one-nine-two"),
        pytest.param("10.0.0.0/8", "10.0.0.0/8", id="whole-ten"),
    ],
)
def test_parse_subnet_accepts(text, network):
    assert parse_subnet(text) == ipaddress.IPv4Network(network)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("10.213.1.1/24", "expected an IPv4 network", id="host-bits-set"),
        pytest.param("nonsense", "expected an IPv4 network", id="not-an-address"),
        pytest.param("10.0.0.0/33", "expected an IPv4 network", id="bad-prefix"),
        pytest.param("fd00::/64", "expected an IPv4 network", id="ipv6"),
        pytest.param("8.8.8.0/24", "expected a private range", id="public"),
        pytest.param("127.0.0.0/24", "expected a private range", id="loopback"),
        pytest.param("169.254.0.0/24", "expected a private range", id="link-local"),
        pytest.param("0.0.0.0/24", "expected a private range", id="this-network"),
        pytest.param("198.18.0.0/24", "expected a private range", id="benchmarking"),
        pytest.param("240.0.0.0/24", "expected a private range", id="reserved"),
        pytest.param("172.32.0.0/24", "expected a private range", id="just-above-172-16-12"),
        pytest.param("10.0.0.0/28", "which has no room for 16 machines", id="too-small"),
    ],
)
def test_parse_subnet_rejects(text, expected):
    with pytest.raises(SandboxError) as err:
        parse_subnet(text, 16)
    assert err.value.msg.startswith(f"subnet: got {text!r}, {expected}")
    assert err.value.details == {"field": "subnet", "value": text}


@pytest.mark.parametrize(
    ("prefix", "size", "fits"),
    [
        pytest.param(28, 4, True, id="slash-28-holds-4"),
        pytest.param(28, 5, False, id="slash-28-not-5"),
        pytest.param(27, 20, True, id="slash-27-holds-20"),
        pytest.param(27, 21, False, id="slash-27-not-21"),
        pytest.param(26, 32, True, id="slash-26-holds-max"),
    ],
)
def test_parse_subnet_room_follows_the_size(prefix, size, fits):
    text = f"10.213.7.0/{prefix}"
    if fits:
        assert parse_subnet(text, size) == ipaddress.IPv4Network(text)
    else:
        with pytest.raises(SandboxError, match=f"no room for {size} machines"):
            parse_subnet(text, size)


@pytest.mark.parametrize(
    ("size", "starting", "available_mib", "refused"),
    [
        pytest.param(32, 32, 24 * 1024, False, id="thirty-two-in-24-gib"),
        pytest.param(32, 32, 32 * MACHINE_MEMORY_MIB, False, id="exactly-enough"),
        pytest.param(32, 32, 32 * MACHINE_MEMORY_MIB - 1, True, id="one-mib-short"),
        pytest.param(32, 2, 2 * MACHINE_MEMORY_MIB, False, id="only-the-new-ones-count"),
        pytest.param(8, 0, 0, False, id="nothing-to-start"),
        pytest.param(8, 8, None, False, id="unknown-memory"),
    ],
)
def test_check_memory(size, starting, available_mib, refused):
    available_kib = None if available_mib is None else available_mib * 1024
    if not refused:
        check_memory(size, starting, available_kib)
        return
    with pytest.raises(SandboxError) as err:
        check_memory(size, starting, available_kib)
    assert err.value.msg.startswith(f"size: got {size}, which starts {starting} machines")
    assert "Nothing was changed" in err.value.msg
    assert err.value.details == {"field": "size", "value": size}


def test_mem_available_kib():
    meminfo = "MemTotal:       24567892 kB\nMemFree:  100 kB\nMemAvailable:   23000123 kB\n"
    assert mem_available_kib(meminfo) == 23000123
    assert mem_available_kib("MemTotal: 1 kB\n") is None


@pytest.mark.parametrize(
    ("fleet", "machine", "index"),
    [
        pytest.param("sandbox", "sandbox-1", 1, id="first"),
        pytest.param("sandbox", "sandbox-16", 16, id="two-digits"),
        pytest.param("sandbox", "sandbox-99", 99, id="largest-name"),
        pytest.param("sandbox", "sandbox-0", None, id="zero"),
        pytest.param("sandbox", "sandbox-01", None, id="leading-zero"),
        pytest.param("sandbox", "sandbox-100", None, id="three-digits"),
        pytest.param("sandbox", "other-1", None, id="other-fleet"),
        pytest.param("sand", "sandbox-1", None, id="fleet-name-is-a-prefix"),
        pytest.param("sandbox", "sandbox-br", None, id="bridge"),
        pytest.param("a.b", "axb-1", None, id="name-is-escaped"),
    ],
)
def test_machine_index(fleet, machine, index):
    assert machine_index(fleet, machine) == index


@pytest.mark.parametrize(
    ("interfaces", "conflicts"),
    [
        pytest.param([], [], id="nothing"),
        pytest.param([("eth0", "192.168.1.20/24")], [], id="elsewhere"),
        pytest.param(
            [("eth0", "10.213.1.7/24")], ["10.213.1.7/24 on eth0"], id="address-in-subnet"
        ),
        pytest.param([("eth0", "10.0.0.0/8")], ["10.0.0.0/8 on eth0"], id="route-covering-it"),
        pytest.param(
            [("wg0", "10.213.1.128/25")], ["10.213.1.128/25 on wg0"], id="route-inside-it"
        ),
        pytest.param([("sandbox-br", "10.213.1.1/24")], [], id="own-bridge"),
        pytest.param([("eth0", "0.0.0.0/0")], [], id="default-route"),
        pytest.param([("eth0", "not-a-cidr")], [], id="unparsable"),
        pytest.param(
            [("a", "10.213.1.0/24"), ("b", "10.213.0.0/16")],
            ["10.213.1.0/24 on a", "10.213.0.0/16 on b"],
            id="all-reported",
        ),
    ],
)
def test_overlapping_networks(interfaces, conflicts):
    subnet = ipaddress.IPv4Network("10.213.1.0/24")
    assert overlapping_networks(subnet, interfaces, "sandbox-br") == conflicts


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        pytest.param([], None, id="empty"),
        pytest.param(["/usr/bin/python3", "-M", "x"], None, id="other-program"),
        pytest.param(["systemd-nspawn-helper", "-M", "x"], None, id="similar-program"),
        pytest.param(["systemd-nspawn", "--boot", "-M", "sandbox-1"], "sandbox-1", id="short"),
        pytest.param(["/usr/bin/systemd-nspawn", "--machine", "s-2"], "s-2", id="long"),
        pytest.param(["systemd-nspawn", "--machine=s-3", "--boot"], "s-3", id="long-equals"),
        pytest.param(["systemd-nspawn", "--boot", "-M"], None, id="flag-without-value"),
        pytest.param(["systemd-nspawn", "--boot"], None, id="no-machine"),
    ],
)
def test_parse_nspawn_cmdline(argv, name):
    assert parse_nspawn_cmdline(argv) == name


@pytest.mark.parametrize(
    ("text", "points"),
    [
        pytest.param("", [], id="empty"),
        pytest.param(
            "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
            "25 22 0:5 / /proc rw - proc proc rw\n",
            ["/", "/proc"],
            id="plain",
        ),
        pytest.param(
            "30 22 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw\n",
            ["/mnt/with space"],
            id="octal-escape",
        ),
        pytest.param("short line\n", [], id="too-few-fields"),
    ],
)
def test_parse_mountinfo(text, points):
    assert parse_mountinfo(text) == points


UNIFIED = "/sys/fs/cgroup/unified"
NAMED_SYSTEMD = "/sys/fs/cgroup/systemd"


@pytest.mark.parametrize(
    ("procs_files", "roots"),
    [
        pytest.param(
            {
                f"{UNIFIED}/cgroup.procs",
                f"{NAMED_SYSTEMD}/cgroup.procs",
                "/sys/fs/cgroup/cgroup.procs",
            },
            [UNIFIED, NAMED_SYSTEMD],
            id="hybrid",
        ),
        pytest.param(
            {f"{NAMED_SYSTEMD}/cgroup.procs"}, [NAMED_SYSTEMD], id="legacy-named-systemd-only"
        ),
        pytest.param({"/sys/fs/cgroup/cgroup.procs"}, ["/sys/fs/cgroup"], id="unified-only"),
        pytest.param(set(), [], id="no-cgroupfs"),
    ],
)
def test_cgroup_roots(procs_files, roots):
    assert cgroup_roots(procs_files.__contains__) == roots


def test_machine_cgroups():
    assert machine_cgroups([UNIFIED, NAMED_SYSTEMD], "sandbox", "sandbox-2") == [
        f"{UNIFIED}/flipback/sandbox/sandbox-2",
        f"{NAMED_SYSTEMD}/flipback/sandbox/sandbox-2",
    ]


IMAGE_RECIPE = {"suite": "bookworm", "variant": "minbase", "packages": ["a1", "b2"], "mirror": ""}


@pytest.mark.parametrize(
    ("change", "same"),
    [
        pytest.param({}, True, id="identical"),
        pytest.param({"packages": ["b2", "a1"]}, True, id="package-order"),
        pytest.param({"packages": ["a1", "b2", "a1"]}, True, id="package-duplicates"),
        pytest.param({"packages": ["a1", "b2", "c3"]}, False, id="package-added"),
        pytest.param({"suite": "trixie"}, False, id="suite"),
        pytest.param({"variant": "buildd"}, False, id="variant"),
        pytest.param({"mirror": "http://deb.example/debian"}, False, id="mirror"),
    ],
)
def test_image_key(change, same):
    key = image_key(**IMAGE_RECIPE)
    other = image_key(**{**IMAGE_RECIPE, **change})
    assert len(key) == 12
    assert set(key) <= set("0123456789abcdef")
    assert (key == other) is same


@pytest.mark.parametrize(
    "packages",
    [
        pytest.param(["python3"], id="one"),
        pytest.param(["g++", "libc6.1-dev", "openssh-server"], id="plus-dot-dash"),
    ],
)
def test_validate_packages_accepts(packages):
    assert validate_packages(packages) == tuple(packages)


@pytest.mark.parametrize(
    ("packages", "invalid"),
    [
        pytest.param([], [], id="empty"),
        pytest.param(["python3", "Python3"], ["Python3"], id="uppercase"),
        pytest.param(["a"], ["a"], id="one-char"),
        pytest.param(["foo bar"], ["foo bar"], id="space"),
        pytest.param(["-foo"], ["-foo"], id="leading-dash"),
        pytest.param(["ok1", "x;rm"], ["x;rm"], id="shell"),
    ],
)
def test_validate_packages_rejects(packages, invalid):
    with pytest.raises(SandboxError) as err:
        validate_packages(packages)
    assert err.value.msg.startswith(f"packages: got {packages!r}, ")
    assert err.value.msg.endswith(f"(invalid: {invalid})")
    assert err.value.details == {"field": "packages", "value": packages}


def running(name, pid):
    return MachineState(
        name=name, pid=pid, mounted=True, netns=True, dir_exists=True, ssh_open=True
    )


@pytest.mark.parametrize(
    ("observed", "config_changed", "expected"),
    [
        pytest.param({}, "", {"create": ["sandbox-1", "sandbox-2"]}, id="nothing"),
        pytest.param(
            {"sandbox-1": running("sandbox-1", 10), "sandbox-2": running("sandbox-2", 11)},
            "",
            {"keep": ["sandbox-1", "sandbox-2"]},
            id="all-running",
        ),
        pytest.param(
            {"sandbox-1": running("sandbox-1", 10), "sandbox-2": running("sandbox-2", 11)},
            "its image changed",
            {"rebuild": ["sandbox-1", "sandbox-2"]},
            id="config-changed",
        ),
        pytest.param(
            {"sandbox-1": MachineState("sandbox-1")},
            "",
            {"create": ["sandbox-1", "sandbox-2"]},
            id="empty-state-is-nothing",
        ),
        pytest.param(
            {
                "sandbox-1": MachineState("sandbox-1", netns=True, mounted=True, dir_exists=True),
                "sandbox-2": MachineState("sandbox-2", dir_exists=True),
            },
            "",
            {"rebuild": ["sandbox-1", "sandbox-2"]},
            id="half-built-leftovers-of-a-killed-run",
        ),
        pytest.param(
            {"sandbox-1": MachineState("sandbox-1", pid=10, mounted=True, netns=True)},
            "",
            {"rebuild": ["sandbox-1"], "create": ["sandbox-2"]},
            id="process-without-ssh-half-built",
        ),
        pytest.param(
            {
                "sandbox-1": running("sandbox-1", 10),
                "sandbox-12": running("sandbox-12", 12),
                "sandbox-3": MachineState("sandbox-3", netns=True),
                "sandbox-4": MachineState("sandbox-4"),
            },
            "",
            {"keep": ["sandbox-1"], "create": ["sandbox-2"], "remove": ["sandbox-3", "sandbox-12"]},
            id="beyond-size-removed-in-index-order",
        ),
    ],
)
def test_plan_present(observed, config_changed, expected):
    plan = plan_present(fleet_spec(size=2), observed, config_changed)
    actual = {
        "keep": plan.keep,
        "create": plan.create,
        "rebuild": plan.rebuild,
        "remove": plan.remove,
    }
    assert actual == {"keep": [], "create": [], "rebuild": [], "remove": [], **expected}
    assert (plan.boot, plan.reboot) == ([], [])
    assert plan.changes is bool(plan.create or plan.rebuild or plan.remove)


@pytest.mark.parametrize(
    ("observed", "remove"),
    [
        pytest.param({}, [], id="nothing"),
        pytest.param({"sandbox-1": MachineState("sandbox-1")}, [], id="no-leftovers"),
        pytest.param(
            {
                "sandbox-10": running("sandbox-10", 3),
                "sandbox-2": MachineState("sandbox-2", dir_exists=True),
                "sandbox-1": MachineState("sandbox-1", mounted=True),
            },
            ["sandbox-1", "sandbox-2", "sandbox-10"],
            id="index-order",
        ),
    ],
)
def test_plan_absent(observed, remove):
    plan = plan_absent("sandbox", observed)
    assert (plan.keep, plan.create, plan.rebuild, plan.remove) == ([], [], [], remove)
    assert plan.changes is bool(remove)


@pytest.mark.parametrize(
    ("state", "is_running", "leftovers"),
    [
        pytest.param(MachineState("m"), False, False, id="nothing"),
        pytest.param(running("m", 5), True, True, id="running"),
        pytest.param(MachineState("m", pid=5, mounted=True, netns=True), False, True, id="no-ssh"),
        pytest.param(MachineState("m", netns=True), False, True, id="netns-only"),
        pytest.param(MachineState("m", dir_exists=True), False, True, id="dir-only"),
    ],
)
def test_machine_state(state, is_running, leftovers):
    assert (state.running, state.leftovers) == (is_running, leftovers)


def test_fleet_spec_paths_and_addresses():
    spec = fleet_spec(size=3, subnet="10.213.1.0/24")
    assert spec.dir == "/var/lib/flipback/sandbox/sandbox"
    assert spec.bridge == "sandbox-br"
    assert spec.gateway == "10.213.1.1"
    assert spec.key == "/var/lib/flipback/sandbox/sandbox/id_ed25519"
    assert spec.known_hosts == "/var/lib/flipback/sandbox/sandbox/known_hosts"
    assert spec.config_file == "/var/lib/flipback/sandbox/sandbox/fleet.json"
    assert spec.recorded_config() == {"subnet": "10.213.1.0/24", "image": IMAGE}
    assert [m.name for m in spec.machines()] == ["sandbox-1", "sandbox-2", "sandbox-3"]


@pytest.mark.parametrize(
    ("subnet", "index", "address"),
    [
        pytest.param("10.213.1.0/24", 1, "10.213.1.11", id="first"),
        pytest.param("10.213.1.0/24", 16, "10.213.1.26", id="last"),
        pytest.param("192.168.7.32/27", 16, "192.168.7.58", id="offset-from-network"),
    ],
)
def test_machine_spec(subnet, index, address):
    machine = fleet_spec(subnet=subnet).machine(index)
    base = f"/var/lib/flipback/sandbox/sandbox/machines/sandbox-{index}"
    prefixlen = ipaddress.IPv4Network(subnet).prefixlen
    assert (machine.name, machine.index, machine.address, machine.prefixlen) == (
        f"sandbox-{index}",
        index,
        address,
        prefixlen,
    )
    assert ipaddress.IPv4Address(address) in ipaddress.IPv4Network(subnet)
    assert machine.veth == f"vsandbox-{index}"
    assert (machine.dir, machine.root, machine.upper, machine.work, machine.console_log) == (
        base,
        f"{base}/root",
        f"{base}/upper",
        f"{base}/work",
        f"{base}/console.log",
    )


def test_longest_names_fit_linux_interface_names():
    spec = fleet_spec(size=16, name=validate_fleet_name("a" * 10))
    names = [spec.bridge, spec.machine(16).veth, spec.machine(16).name]
    assert max(len(n) for n in names) <= 15


@pytest.mark.parametrize(
    ("mirror", "tail"),
    [
        pytest.param("", ["bookworm", "/t"], id="default-mirror"),
        pytest.param(
            "http://deb.example/d", ["bookworm", "/t", "http://deb.example/d"], id="mirror"
        ),
    ],
)
def test_debootstrap_argv(mirror, tail):
    spec = ImageSpec("bookworm", "minbase", ("sshd", "dbus", "sshd"), mirror, "/i", "/c")
    assert spec.debootstrap_argv("/t") == [
        "debootstrap",
        "--variant=minbase",
        "--cache-dir=/c",
        "--include=dbus,sshd",
        *tail,
    ]
    assert spec.path == f"/i/{image_key('bookworm', 'minbase', ('dbus', 'sshd'), mirror)}"


# =========================================================================== FakeHost


class FakeHost:
    """An in-memory controller: processes, mounts, namespaces, links and files.

    Commands passed to `run` change the model the way the real tools would, and
    every call is recorded. The clock only moves when `sleep` is called.
    """

    MUTATING = frozenset(
        {
            "run",
            "makedirs",
            "write_file",
            "rmtree",
            "remove",
            "ensure_nspawn_runtime_dir",
            "raise_inotify_instances",
            "start_nspawn",
            "signal",
            "rename",
            "symlink",
            "remove_cgroups",
        }
    )

    def __init__(self):
        self.clock = 100.0
        self.calls = []
        self.procs = {}  # pid -> {"name", "dies_at", "term_delay", "kill_delay"}
        self.next_pid = 1000
        self.mounts = {}  # mount point -> overlay (lowerdir, upperdir) or None
        self.netns = set()
        self.links = set()
        self.addresses = {}  # link -> set of CIDRs
        self.files = {}
        self.modes = {}
        self.symlinks = {}
        self.dirs = {"/"}
        self.networks = []  # what `interface_networks` reports
        self.boot_delay = 1.0  # seconds until a new machine's sshd answers; None: never
        self.sshd_from = {}  # address -> time sshd answers
        self.system_state = {}  # machine name -> `systemctl is-system-running` output
        self.term_delay = 2.0  # seconds a machine takes to stop on SIGTERM; None: ignores it
        self.kill_delay = 0.0  # None: survives SIGKILL
        self.veth_outcome = "gone"  # after `ip netns del`: gone, lagging or stuck
        self.busy_mounts = set()  # mount points a plain umount cannot detach
        self.debootstrap = (0, "I: Base system installed successfully.\n")
        self.cgroup_roots = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"]
        self.cgroup_dirs = set()
        self.started_in = {}  # machine name -> cgroups it was started in
        self.available_kib = 24 * 1024 * 1024  # MemAvailable; None: not known
        self.inotify_instances = 128  # fs.inotify.max_user_instances

    # -- bookkeeping
    def _record(self, name, *args):
        self.calls.append((name, args))

    @property
    def mutations(self):
        return [call for call in self.calls if call[0] in self.MUTATING]

    def commands(self):
        return [list(args[0]) for name, args in self.calls if name == "run"]

    def reset_calls(self):
        self.calls.clear()

    def _overlay_path(self, path, for_reading=False):
        """Paths inside a mounted overlay live in its upper (or, for reading, lower) dir."""
        for root, overlay in self.mounts.items():
            if overlay and (path == root or path.startswith(root + "/")):
                lower, upper = overlay
                rel = os.path.relpath(path, root)
                written = posixpath.normpath(posixpath.join(upper, rel))
                if for_reading and written not in self.files:
                    return posixpath.normpath(posixpath.join(lower, rel))
                return written
        return path

    def _add_dirs(self, path):
        while path not in self.dirs:
            self.dirs.add(path)
            path = posixpath.dirname(path)

    def _store(self, path, content, mode=0o644):
        path = self._overlay_path(path)
        self._add_dirs(posixpath.dirname(path))
        self.files[path] = content
        self.modes[path] = mode

    def _under(self, path, base):
        return path == base or path.startswith(base + "/")

    def add_file(self, path, content="", mode=0o644):
        self._store(path, content, mode)

    def kill_machine(self, name):
        """The machine's process died (or was killed with the run that started it)."""
        for pid, proc in list(self.procs.items()):
            if proc["name"] == name:
                del self.procs[pid]

    # -- observation
    def nspawn_pids(self):
        self._record("nspawn_pids")
        return {p["name"]: pid for pid, p in self.procs.items() if self._alive(pid)}

    def mount_points(self):
        self._record("mount_points")
        return set(self.mounts)

    def netns_names(self):
        self._record("netns_names")
        return set(self.netns)

    def listdir(self, path):
        self._record("listdir", path)
        children = {
            posixpath.basename(p)
            for p in [*self.dirs, *self.files, *self.symlinks]
            if p != path and posixpath.dirname(p) == path
        }
        return sorted(children)

    def exists(self, path):
        self._record("exists", path)
        path = self._overlay_path(path, for_reading=True)
        return path in self.files or path in self.dirs or path in self.symlinks

    def link_exists(self, ifname):
        self._record("link_exists", ifname)
        return ifname in self.links

    def _sshd_up(self, address):
        return address in self.sshd_from and self.clock >= self.sshd_from[address]

    def tcp_open(self, address, port, timeout=0.3):
        self._record("tcp_open", address, port)
        return port == 22 and self._sshd_up(address)

    def ssh_banner(self, address, timeout=1.0):
        self._record("ssh_banner", address)
        return self._sshd_up(address)

    def interface_networks(self):
        self._record("interface_networks")
        return list(self.networks)

    def read_json(self, path):
        self._record("read_json", path)
        path = self._overlay_path(path, for_reading=True)
        try:
            return json.loads(self.files[path])
        except (KeyError, ValueError):
            return None

    def read_text(self, path):
        self._record("read_text", path)
        path = self._overlay_path(path, for_reading=True)
        if path not in self.files:
            raise FileNotFoundError(path)
        return self.files[path]

    def overlay_lowerdirs(self):
        self._record("overlay_lowerdirs")
        return {overlay[0] for overlay in self.mounts.values() if overlay}

    def mem_available_kib(self):
        self._record("mem_available_kib")
        return self.available_kib

    def glob(self, pattern):
        self._record("glob", pattern)
        return sorted(p for p in [*self.files, *self.symlinks] if fnmatch.fnmatch(p, pattern))

    def _alive(self, pid):
        proc = self.procs.get(pid)
        return proc is not None and (proc["dies_at"] is None or self.clock < proc["dies_at"])

    def alive(self, pid):
        self._record("alive", pid)
        return self._alive(pid)

    def now(self):
        return self.clock

    def cgroups(self, fleet, machine):
        self._record("cgroups", fleet, machine)
        return machine_cgroups(self.cgroup_roots, fleet, machine)

    def sleep(self, seconds):
        self._record("sleep", seconds)
        self.clock += seconds

    def ssh_run_many(self, targets, command, key, known_hosts, timeout):
        self._record("ssh_run_many", list(targets), command, key, known_hosts, timeout)
        return {name: (0, self.system_state.get(name, "running")) for name, _ in targets}

    # -- changes
    def run(self, argv, *, check=True):
        argv = list(argv)
        self._record("run", argv)
        rc, out, err = self._command(argv)
        if check and rc != 0:
            raise SandboxError(f"command failed: {' '.join(argv)} (exit {rc})", retryable=True)
        return subprocess.CompletedProcess(argv, rc, out, err)

    def _command(self, argv):
        match argv:
            case ["ip", "link", "add", name, "type", "bridge"]:
                self.links.add(name)
            case ["ip", "link", "add", veth, "type", "veth", "peer", "name", "host0", "netns", _]:
                self.links.add(veth)
            case ["ip", "link", "del", name]:
                if name not in self.links:
                    return 1, "", "Cannot find device"
                is_veth = not name.endswith("-br")
                if is_veth and self.veth_outcome == "lagging":
                    self.links.discard(name)
                    return 1, "", "Cannot find device"
                if is_veth and self.veth_outcome == "stuck":
                    return 2, "", "RTNETLINK answers: Device or resource busy"
                self.links.discard(name)
                self.addresses.pop(name, None)
            case ["ip", "addr", "replace", cidr, "dev", name]:
                self.addresses.setdefault(name, set()).add(cidr)
            case ["ip", "addr", "flush", "dev", name]:
                self.addresses.pop(name, None)
            case ["ip", "netns", "add", name]:
                self.netns.add(name)
            case ["ip", "netns", "del", name]:
                self.netns.discard(name)
                if self.veth_outcome == "gone":
                    self.links.discard(f"v{name}")
            case ["mount", "-t", "overlay", "overlay", "-o", options, root]:
                opts = dict(o.split("=", 1) for o in options.split(","))
                self.mounts[root] = (opts["lowerdir"], opts["upperdir"])
            case ["umount", root]:
                if root in self.busy_mounts:
                    return 32, "", f"umount: {root}: target is busy."
                self.mounts.pop(root)
            case ["umount", "--lazy", root]:
                self.mounts.pop(root)
            case ["ssh-keygen", *_, "-C", comment, "-f", path]:
                self._store(path, f"PRIVATE {comment}\n", 0o600)
                self._store(path + ".pub", f"ssh-ed25519 AAAA{comment} {comment}\n")
            case ["debootstrap", *args]:
                _suite, target, *_mirror = [a for a in args if not a.startswith("--")]
                rc, out = self.debootstrap
                self._add_dirs(target)
                self._store(f"{target}/etc/ssh/ssh_host_ed25519_key", "k", 0o600)
                self._store(f"{target}/etc/ssh/ssh_host_rsa_key.pub", "k")
                self._store(f"{target}/etc/ssh/sshd_config", "Port 22\n")
                self._store(f"{target}/var/cache/apt/archives/dbus_1.deb", "deb")
                self._add_dirs(f"{target}/etc/systemd/system")
                return rc, out, ""
            case ["ip", "link", "set", *_] | ["ip", "-n", *_]:
                pass
            case _:
                raise AssertionError(f"FakeHost does not know {argv}")
        return 0, "", ""

    def makedirs(self, path, mode=0o755):
        self._record("makedirs", path, mode)
        self._add_dirs(self._overlay_path(path))

    def write_file(self, path, content, mode=0o644):
        self._record("write_file", path, content, mode)
        self._store(path, content, mode)

    def rmtree(self, path):
        self._record("rmtree", path)
        for store in (self.files, self.symlinks):
            for p in [p for p in store if self._under(p, path)]:
                del store[p]
        self.dirs = {d for d in self.dirs if not self._under(d, path)} | {"/"}

    def remove(self, path):
        self._record("remove", path)
        self.files.pop(path, None)
        self.symlinks.pop(path, None)

    def rename(self, src, dst):
        self._record("rename", src, dst)
        for store in (self.files, self.symlinks, self.modes):
            for p in [p for p in store if self._under(p, src)]:
                store[dst + p[len(src) :]] = store.pop(p)
        moved = {d for d in self.dirs if self._under(d, src)}
        self.dirs = (self.dirs - moved) | {dst + d[len(src) :] for d in moved}

    def symlink(self, target, path):
        self._record("symlink", target, path)
        self.symlinks[path] = target

    def ensure_nspawn_runtime_dir(self):
        self._record("ensure_nspawn_runtime_dir")
        self.mounts.setdefault(NSPAWN_RUNTIME_DIR, None)

    def raise_inotify_instances(self, needed):
        self._record("raise_inotify_instances", needed)
        if self.inotify_instances >= needed:
            return None
        before, self.inotify_instances = self.inotify_instances, needed
        return before

    def remove_cgroups(self, paths):
        self._record("remove_cgroups", list(paths))
        for path in paths:
            self.cgroup_dirs = {d for d in self.cgroup_dirs if not self._under(d, path)}

    def start_nspawn(self, machine, cgroups):
        self._record("start_nspawn", machine.name)
        for path in cgroups:
            while path not in self.cgroup_roots:
                self.cgroup_dirs.add(path)
                path = posixpath.dirname(path)
        self.started_in[machine.name] = list(cgroups)
        assert machine.root in self.mounts, f"{machine.name} started without its overlay"
        assert machine.name in self.netns, f"{machine.name} started without its namespace"
        pid = self.next_pid
        self.next_pid += 1
        self.procs[pid] = {"name": machine.name, "dies_at": None}
        self._store(machine.console_log, f"Booting {machine.name}...\n[FAILED] sshd.service\n")
        if self.boot_delay is not None:
            self.sshd_from[machine.address] = self.clock + self.boot_delay
        return pid

    def signal(self, pid, sig):
        self._record("signal", pid, sig, self.clock)
        proc = self.procs.get(pid)
        if proc is None:
            return
        delay = self.term_delay if sig == signal.SIGTERM else self.kill_delay
        if delay is not None:
            dies_at = self.clock + delay
            proc["dies_at"] = dies_at if proc["dies_at"] is None else min(proc["dies_at"], dies_at)


# =========================================================================== Fleet


@pytest.fixture
def host():
    return FakeHost()


def up(host, spec, **kwargs):
    """A fleet brought up on `host`, with its calls forgotten."""
    Fleet(spec, host, **kwargs).present(check_mode=False)
    host.reset_calls()
    return host


def machine_pids(host):
    return {p["name"]: pid for pid, p in host.procs.items() if host._alive(pid)}


def test_present_on_nothing_creates_bridge_and_machines(host):
    spec = fleet_spec(size=2)
    host.networks = [("eth0", "192.168.1.20/24")]

    result = Fleet(spec, host).present(check_mode=False)

    assert result["changed"] is True
    assert (result["created"], result["kept"], result["rebuilt"], result["removed"]) == (
        ["sandbox-1", "sandbox-2"],
        [],
        [],
        [],
    )
    assert result["machines"] == [
        {"name": "sandbox-1", "address": "10.213.1.11"},
        {"name": "sandbox-2", "address": "10.213.1.12"},
    ]
    assert "sandbox-br" in host.links
    assert host.addresses["sandbox-br"] == {"10.213.1.1/24"}
    assert set(machine_pids(host)) == {"sandbox-1", "sandbox-2"}
    assert host.netns == {"sandbox-1", "sandbox-2"}
    assert {"vsandbox-1", "vsandbox-2"} <= host.links
    for machine in spec.machines():
        assert host.mounts[machine.root] == (IMAGE, machine.upper)
        assert host.read_text(f"{machine.root}/etc/hostname") == f"{machine.name}\n"
        assert host.read_text(f"{machine.root}/root/.ssh/authorized_keys") == host.read_text(
            spec.key + ".pub"
        )
        assert [
            "ip",
            "-n",
            machine.name,
            "addr",
            "add",
            f"{machine.address}/24",
            "dev",
            "host0",
        ] in (host.commands())
    assert host.read_text(spec.known_hosts) == (
        "10.213.1.11 ssh-ed25519 AAAAsandbox-1\n10.213.1.12 ssh-ed25519 AAAAsandbox-2\n"
    )
    assert json.loads(host.read_text(spec.config_file)) == spec.recorded_config()
    assert NSPAWN_RUNTIME_DIR in host.mounts
    order = [name for name, _ in host.calls]
    assert order.index("ensure_nspawn_runtime_dir") < order.index("start_nspawn")
    known_hosts_written = next(
        i
        for i, (name, args) in enumerate(host.calls)
        if name == "write_file" and args[0] == spec.known_hosts
    )
    assert known_hosts_written < order.index("ssh_run_many")


def test_present_starts_every_machine_in_its_own_cgroups(host):
    Fleet(fleet_spec(size=2), host).present(check_mode=False)
    assert host.started_in == {
        "sandbox-1": [
            f"{UNIFIED}/flipback/sandbox/sandbox-1",
            f"{NAMED_SYSTEMD}/flipback/sandbox/sandbox-1",
        ],
        "sandbox-2": [
            f"{UNIFIED}/flipback/sandbox/sandbox-2",
            f"{NAMED_SYSTEMD}/flipback/sandbox/sandbox-2",
        ],
    }


def test_present_refuses_machines_the_memory_cannot_hold(host):
    spec = fleet_spec(size=2)
    up(host, spec)
    # Two more machines need 2 x MACHINE_MEMORY_MIB; the two running ones do not count.
    host.available_kib = (2 * MACHINE_MEMORY_MIB - 1) * 1024
    bigger = fleet_spec(size=4)

    with pytest.raises(SandboxError, match="size: got 4, which starts 2 machines"):
        Fleet(bigger, host).present(check_mode=False)
    assert host.mutations == []

    host.available_kib = 2 * MACHINE_MEMORY_MIB * 1024
    assert Fleet(bigger, host).present(check_mode=False)["created"] == ["sandbox-3", "sandbox-4"]


def test_present_raises_the_inotify_limit_before_booting_a_large_fleet(host):
    Fleet(fleet_spec(size=32), host).present(check_mode=False)
    assert host.inotify_instances == inotify_instances_needed(32) == 256 + 16 * 32
    order = [name for name, _ in host.calls]
    assert order.index("raise_inotify_instances") < order.index("start_nspawn")


def test_present_never_lowers_the_inotify_limit(host):
    host.inotify_instances = 100000
    Fleet(fleet_spec(size=2), host).present(check_mode=False)
    assert host.inotify_instances == 100000


def test_present_on_running_fleet_changes_nothing(host):
    spec = fleet_spec(size=2)
    up(host, spec)
    pids = machine_pids(host)

    result = Fleet(spec, host).present(check_mode=False)

    assert result["changed"] is False
    assert result["kept"] == ["sandbox-1", "sandbox-2"]
    assert host.mutations == []
    assert machine_pids(host) == pids


def test_present_rebuilds_half_built_leftovers_of_a_killed_run(host):
    spec = fleet_spec(size=3)
    up(host, spec)
    pid_1 = machine_pids(host)["sandbox-1"]
    # sandbox-2: the run was killed before it wrote /etc/hosts; its mount and
    # namespace stayed.
    host.kill_machine("sandbox-2")
    host.files.pop(f"{spec.machine(2).upper}/etc/hosts")
    # sandbox-3: the run was killed after making the directory.
    host.kill_machine("sandbox-3")
    host.mounts.pop(spec.machine(3).root)
    host._command(["ip", "netns", "del", "sandbox-3"])
    host.rmtree(spec.machine(3).upper)

    result = Fleet(spec, host).present(check_mode=False)

    assert result["changed"] is True
    assert (result["kept"], result["rebuilt"], result["created"]) == (
        ["sandbox-1"],
        ["sandbox-2", "sandbox-3"],
        [],
    )
    commands = host.commands()
    assert ["umount", spec.machine(2).root] in commands
    assert ["ip", "netns", "del", "sandbox-2"] in commands
    assert ["umount", spec.machine(3).root] not in commands
    assert ["ip", "netns", "del", "sandbox-3"] not in commands
    assert not any(name == "signal" for name, _ in host.calls)
    assert machine_pids(host)["sandbox-1"] == pid_1
    assert set(machine_pids(host)) == {"sandbox-1", "sandbox-2", "sandbox-3"}
    assert host.netns == {"sandbox-1", "sandbox-2", "sandbox-3"}


def test_present_removes_machines_beyond_size(host):
    up(host, fleet_spec(size=3))
    pid_1 = machine_pids(host)["sandbox-1"]
    spec = fleet_spec(size=1)

    result = Fleet(spec, host).present(check_mode=False)

    assert (result["kept"], result["removed"], result["created"]) == (
        ["sandbox-1"],
        ["sandbox-2", "sandbox-3"],
        [],
    )
    assert machine_pids(host) == {"sandbox-1": pid_1}
    assert host.netns == {"sandbox-1"}
    assert set(host.mounts) == {spec.machine(1).root, NSPAWN_RUNTIME_DIR}
    assert host.listdir(f"{spec.dir}/machines") == ["sandbox-1"]
    assert host.read_text(spec.known_hosts) == "10.213.1.11 ssh-ed25519 AAAAsandbox-1\n"
    assert not any(name == "start_nspawn" for name, _ in host.calls)
    assert {d for d in host.cgroup_dirs if d.startswith(UNIFIED)} == {
        f"{UNIFIED}/flipback",
        f"{UNIFIED}/flipback/sandbox",
        f"{UNIFIED}/flipback/sandbox/sandbox-1",
    }


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"image": "/var/lib/flipback/images/ba9876543210"}, id="image"),
        pytest.param({"subnet": "10.213.2.0/24"}, id="subnet"),
    ],
)
def test_present_rebuilds_all_when_config_changed(host, change):
    up(host, fleet_spec(size=2))
    old_pids = set(machine_pids(host).values())
    spec = fleet_spec(size=2, **change)

    result = Fleet(spec, host).present(check_mode=False)

    assert result["changed"] is True
    assert (result["kept"], result["rebuilt"]) == ([], ["sandbox-1", "sandbox-2"])
    assert not old_pids & set(machine_pids(host).values())
    assert json.loads(host.read_text(spec.config_file)) == spec.recorded_config()
    for machine in spec.machines():
        assert host.mounts[machine.root][0] == spec.image
    # The old gateway address goes; only the current one stays on the bridge.
    assert ["ip", "addr", "flush", "dev", "sandbox-br"] in host.commands()
    assert host.addresses["sandbox-br"] == {f"{spec.gateway}/24"}
    assert "interface_networks" in [name for name, _ in host.calls]


def test_present_rejects_a_changed_subnet_in_use_before_any_change(host):
    up(host, fleet_spec(size=1))
    host.networks = [("eth1", "10.213.2.0/24")]

    with pytest.raises(SandboxError) as err:
        Fleet(fleet_spec(size=1, subnet="10.213.2.0/24"), host).present(check_mode=False)

    assert "10.213.2.0/24 on eth1" in err.value.msg
    assert host.mutations == []


@pytest.mark.parametrize(
    ("prepare", "expected"),
    [
        pytest.param(
            lambda host, spec: None, {"created": ["sandbox-1", "sandbox-2"]}, id="nothing"
        ),
        pytest.param(
            lambda host, spec: (up(host, spec), host.kill_machine("sandbox-2")),
            {"kept": ["sandbox-1"], "booted": ["sandbox-2"]},
            id="stopped",
        ),
        pytest.param(
            lambda host, spec: up(host, fleet_spec(size=3)),
            {"kept": ["sandbox-1", "sandbox-2"], "removed": ["sandbox-3"]},
            id="beyond-size",
        ),
    ],
)
def test_present_check_mode_reports_the_plan_without_changes(host, prepare, expected):
    spec = fleet_spec(size=2)
    prepare(host, spec)
    host.reset_calls()

    result = Fleet(spec, host).present(check_mode=True)

    assert result["changed"] is True
    keys = ("kept", "created", "booted", "rebooted", "rebuilt", "removed")
    plan = {k: result[k] for k in keys}
    assert plan == {k: [] for k in keys} | expected
    assert host.mutations == []


def test_present_check_mode_on_running_fleet_is_unchanged(host):
    spec = fleet_spec(size=2)
    up(host, spec)
    assert Fleet(spec, host).present(check_mode=True)["changed"] is False
    assert host.mutations == []


@pytest.mark.parametrize(
    ("networks", "conflict"),
    [
        pytest.param([("eth1", "10.213.1.5/24")], "10.213.1.5/24 on eth1", id="address"),
        pytest.param([("tun0", "10.213.0.0/16")], "10.213.0.0/16 on tun0", id="route"),
    ],
)
@pytest.mark.parametrize("check_mode", [False, True], ids=["apply", "check"])
def test_present_subnet_conflict_raises_before_any_change(host, networks, conflict, check_mode):
    host.networks = [("lo", "127.0.0.1/8"), *networks]

    with pytest.raises(SandboxError) as err:
        Fleet(fleet_spec(), host).present(check_mode=check_mode)

    assert conflict in err.value.msg
    assert err.value.details["field"] == "subnet"
    assert err.value.details["value"] == "10.213.1.0/24"
    assert err.value.details["conflicts"] == [conflict]
    assert err.value.retryable is False
    assert host.mutations == []


def test_present_boot_timeout_is_retryable_and_shows_the_console(host):
    host.boot_delay = None

    with pytest.raises(SandboxError) as err:
        Fleet(fleet_spec(size=2), host, boot_timeout=5).present(check_mode=False)

    assert err.value.retryable is True
    assert "sandbox-1, sandbox-2 did not boot within 5s: sshd never answered" in err.value.msg
    assert err.value.details["console"] == {
        "sandbox-1": "Booting sandbox-1...\n[FAILED] sshd.service\n",
        "sandbox-2": "Booting sandbox-2...\n[FAILED] sshd.service\n",
    }
    assert 105 <= host.clock < 106


def test_present_boot_timeout_names_only_the_silent_machine(host):
    host.boot_delay = 1.0
    original = host.start_nspawn

    def start_second_silently(machine, cgroups):
        pid = original(machine, cgroups)
        if machine.name == "sandbox-2":
            del host.sshd_from[machine.address]
            host.files.pop(machine.console_log)
        return pid

    host.start_nspawn = start_second_silently

    with pytest.raises(SandboxError) as err:
        Fleet(fleet_spec(size=2), host, boot_timeout=3).present(check_mode=False)

    assert "machines sandbox-2 did not boot" in err.value.msg
    assert err.value.details["console"] == {"sandbox-2": ""}


def test_present_systemd_not_running_raises(host):
    host.system_state = {"sandbox-2": "starting\ndegraded"}

    with pytest.raises(SandboxError) as err:
        Fleet(fleet_spec(size=2), host).present(check_mode=False)

    assert err.value.retryable is True
    assert "machines sandbox-2 did not boot" in err.value.msg
    assert "systemd did not reach 'running'" in err.value.msg
    assert "degraded" in err.value.msg
    assert "sandbox-1" not in err.value.details["console"]


def test_absent_stops_and_removes_everything(host):
    spec = fleet_spec(size=2)
    up(host, spec)
    pids = sorted(machine_pids(host).values())

    result = Fleet(spec, host, stop_timeout=15).absent(check_mode=False)

    assert result["changed"] is True
    assert result["removed"] == ["sandbox-1", "sandbox-2"]
    signals = [args[:2] for name, args in host.calls if name == "signal"]
    assert signals == [(pid, signal.SIGTERM) for pid in pids]
    assert machine_pids(host) == {}
    assert set(host.mounts) == {NSPAWN_RUNTIME_DIR}
    assert host.netns == set()
    assert host.links == set()
    assert not host.exists(spec.dir)
    assert not any(name == "tcp_open" for name, _ in host.calls)
    # Only the parent shared with other fleets stays.
    assert host.cgroup_dirs == {f"{UNIFIED}/flipback", f"{NAMED_SYSTEMD}/flipback"}


def test_absent_kills_machines_that_ignore_sigterm_after_stop_timeout(host):
    spec = fleet_spec(size=2)
    up(host, spec)
    start = host.clock
    host.term_delay = None

    Fleet(spec, host, stop_timeout=15).absent(check_mode=False)

    signals = [args[1:] for name, args in host.calls if name == "signal"]
    assert [sig for sig, _ in signals] == [signal.SIGTERM] * 2 + [signal.SIGKILL] * 2
    kill_times = [at for sig, at in signals if sig == signal.SIGKILL]
    assert all(start + 15 <= at < start + 15.2 for at in kill_times)
    assert machine_pids(host) == {}


def test_absent_raises_when_machines_survive_sigkill(host):
    spec = fleet_spec(size=1)
    up(host, spec)
    host.term_delay = None
    host.kill_delay = None

    with pytest.raises(SandboxError) as err:
        Fleet(spec, host, stop_timeout=2).absent(check_mode=False)

    assert err.value.retryable is True
    assert f"{list(machine_pids(host).values())} survived SIGKILL" in err.value.msg
    assert host.exists(spec.dir)


def test_absent_detaches_a_busy_mount_lazily(host):
    spec = fleet_spec(size=1)
    up(host, spec)
    host.busy_mounts.add(spec.machine(1).root)

    Fleet(spec, host).absent(check_mode=False)

    commands = host.commands()
    assert ["umount", "--lazy", spec.machine(1).root] in commands
    assert spec.machine(1).root not in host.mounts


@pytest.mark.parametrize(
    ("outcome", "error"),
    [
        pytest.param("lagging", None, id="gone-meanwhile-is-success"),
        pytest.param("stuck", "could not delete veth vsandbox-1", id="still-there"),
    ],
)
def test_absent_veth_left_after_netns_delete(host, outcome, error):
    spec = fleet_spec(size=1)
    up(host, spec)
    host.veth_outcome = outcome

    if error is None:
        Fleet(spec, host).absent(check_mode=False)
        assert host.links == set()
    else:
        with pytest.raises(SandboxError) as err:
            Fleet(spec, host).absent(check_mode=False)
        assert error in err.value.msg
        assert err.value.retryable is True
    assert ["ip", "link", "del", "vsandbox-1"] in host.commands()


def test_absent_on_nothing_is_unchanged(host):
    result = Fleet(fleet_spec(), host).absent(check_mode=False)
    assert result["changed"] is False
    assert result["removed"] == []
    assert host.mutations == []


def test_absent_removes_a_bridge_left_alone(host):
    host.links.add("sandbox-br")
    result = Fleet(fleet_spec(), host).absent(check_mode=False)
    assert result["changed"] is True
    assert ["ip", "link", "del", "sandbox-br"] in host.commands()
    assert host.links == set()


def test_absent_check_mode_reports_without_changes(host):
    spec = fleet_spec(size=2)
    up(host, spec)

    result = Fleet(spec, host).absent(check_mode=True)

    assert result["changed"] is True
    assert result["removed"] == ["sandbox-1", "sandbox-2"]
    assert host.mutations == []
    assert len(machine_pids(host)) == 2


# =========================================================================== Image


def image_spec(packages=("openssh-server", "systemd")):
    return ImageSpec("bookworm", "minbase", packages, "", IMAGES_DIR, "/var/cache/flipback/debs")


def build_dir(spec):
    return f"{IMAGES_DIR}/.build-{spec.key}-{os.getpid()}"


def test_image_present_is_unchanged_and_builds_nothing(host):
    spec = image_spec()
    host.add_file(f"{spec.path}/{IMAGE_MARKER}", json.dumps({"key": spec.key}))

    result = Image(spec, host).ensure(check_mode=False)

    assert result == {"path": spec.path, "key": spec.key, "pruned": [], "changed": False}
    assert host.mutations == []


def test_image_without_marker_needs_a_build_in_check_mode(host):
    spec = image_spec()
    host.add_file(f"{spec.path}/etc/hostname", "half\n")

    assert Image(spec, host).ensure(check_mode=True)["changed"] is True
    assert host.mutations == []


def test_image_build_failure_removes_temp_dir_and_is_retryable(host):
    spec = image_spec()
    host.debootstrap = (1, "E: Couldn't download packages: systemd\n")

    with pytest.raises(SandboxError) as err:
        Image(spec, host).ensure(check_mode=False)

    assert err.value.retryable is True
    assert "debootstrap of bookworm failed (exit 1)" in err.value.msg
    assert "E: Couldn't download packages: systemd" in err.value.msg
    assert not host.exists(build_dir(spec))
    assert not host.exists(spec.path)
    assert not any(name == "rename" for name, _ in host.calls)


def test_image_build_customizes_marks_and_prunes(host):
    spec = image_spec()
    old = f"{IMAGES_DIR}/aaaaaaaaaaaa"
    in_use = f"{IMAGES_DIR}/bbbbbbbbbbbb"
    killed_build = f"{IMAGES_DIR}/.build-cccccccccccc-1"
    for path in (old, in_use, killed_build):
        host.add_file(f"{path}/{IMAGE_MARKER}", "{}")
    host.mounts["/var/lib/flipback/sandbox/sandbox/machines/sandbox-1/root"] = (in_use, "/u")

    result = Image(spec, host).ensure(check_mode=False)

    assert result["changed"] is True
    assert result["pruned"] == [killed_build, old]
    assert sorted(host.listdir(IMAGES_DIR)) == sorted(["bbbbbbbbbbbb", spec.key])
    assert ["rename", (build_dir(spec), spec.path)] in [[n, a] for n, a in host.calls]
    root = spec.path
    assert host.glob(f"{root}/etc/ssh/ssh_host_*") == []
    assert host.exists(f"{root}/etc/ssh/sshd_config")
    for rel, content in IMAGE_FILES.items():
        assert host.read_text(f"{root}/{rel}") == content
    for unit in IMAGE_MASKED_UNITS:
        assert host.symlinks[f"{root}/etc/systemd/system/{unit}"] == "/dev/null"
    assert host.read_text(f"{root}/etc/machine-id") == ""
    assert host.modes[f"{root}/etc/machine-id"] == 0o444
    assert host.glob(f"{root}/var/cache/apt/archives/*.deb") == []
    assert json.loads(host.read_text(f"{root}/{IMAGE_MARKER}")) == {
        "key": spec.key,
        "suite": "bookworm",
        "packages": ["openssh-server", "systemd"],
    }
    assert Image(spec, host).present() is True
    debootstrap = next(argv for argv in host.commands() if argv[0] == "debootstrap")
    assert debootstrap == spec.debootstrap_argv(build_dir(spec))


def test_image_build_keeps_the_images_of_other_suites(host):
    # A trixie scenario and the bookworm ones take turns on one controller: a build of
    # one suite never throws the other's image away, only older images of its own.
    spec = image_spec()
    trixie = f"{IMAGES_DIR}/dddddddddddd"
    older_bookworm = f"{IMAGES_DIR}/eeeeeeeeeeee"
    host.add_file(f"{trixie}/{IMAGE_MARKER}", json.dumps({"suite": "trixie"}))
    host.add_file(f"{older_bookworm}/{IMAGE_MARKER}", json.dumps({"suite": "bookworm"}))

    result = Image(spec, host).ensure(check_mode=False)

    assert result["pruned"] == [older_bookworm]
    assert sorted(host.listdir(IMAGES_DIR)) == sorted(["dddddddddddd", spec.key])


def test_image_build_marker_is_written_before_the_rename(host):
    spec = image_spec()
    Image(spec, host).ensure(check_mode=False)
    names = [(name, args[0]) for name, args in host.calls if name in ("write_file", "rename")]
    assert names[-2:] == [
        ("write_file", f"{build_dir(spec)}/{IMAGE_MARKER}"),
        ("rename", build_dir(spec)),
    ]
