"""Sandbox fleets: real systemd machines (systemd-nspawn) on one controller.

A fleet is a bridge on the controller plus N machines. Each machine is an
overlayfs copy of a debootstrapped base image, booted by systemd-nspawn inside
its own network namespace, joined to the bridge by a veth pair and reached over
SSH with a key generated for the fleet. Nothing here routes beyond the fleet's
own private subnet: machines get no default route.

The pure functions (names, addresses, planning) are separated from `Host`,
which is the only class that touches the system, so the planning and the order
of operations can be unit-tested with a fake host.
"""

from __future__ import annotations

import contextlib
import glob as globmod
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

from ansible.module_utils.flipback_common import FlipbackError

FLEET_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")
MAX_SIZE = 32
# What one machine needs, booted and running a deployed service with its standby (about
# 16 MB idle, 60-90 MB with two uvicorn instances and nginx), with room to spare: a fleet
# is refused when the controller's available memory cannot hold this much per machine.
MACHINE_MEMORY_MIB = 192
# inotify instances a booted machine takes from root's per-user limit (systemd, journald,
# logind and the like: about 6); Debian's default limit of 128 stops the 20th machine's
# systemd ("Failed to allocate manager object: Too many open files").
INOTIFY_PER_MACHINE = 16
INOTIFY_SPARE = 256
INOTIFY_INSTANCES = "/proc/sys/fs/inotify/max_user_instances"
# Machine N gets host address FIRST_HOST_OFFSET + N in the subnet; .1 is the bridge.
FIRST_HOST_OFFSET = 10
NSPAWN_RUNTIME_DIR = "/run/systemd/nspawn"
# RFC 1918 only: ipaddress's is_private also admits 0.0.0.0/8, 198.18.0.0/15,
# documentation ranges and 240.0.0.0/4.
PRIVATE_RANGES = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
IMAGE_RECIPE_VERSION = 1
IMAGE_MARKER = ".flipback-image.json"


class SandboxError(FlipbackError):
    """A failure with what was observed, what was expected, and whether a retry is safe."""


# --------------------------------------------------------------------------- names


def validate_fleet_name(name: str) -> str:
    if not isinstance(name, str) or not FLEET_NAME_RE.fullmatch(name):
        raise SandboxError(
            f"name: got {name!r}, expected 1-10 characters, a lowercase letter then "
            "lowercase letters or digits (it prefixes interface names, limited to 15 "
            "characters by Linux)",
            field="name",
            value=name,
        )
    return name


def validate_size(size: int) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_SIZE:
        raise SandboxError(
            f"size: got {size!r}, expected an integer from 1 to {MAX_SIZE}",
            field="size",
            value=size,
        )
    return size


def check_memory(size: int, starting: int, available_kib: int | None) -> None:
    """Refuse to start `starting` machines of a fleet of `size` when the controller's
    available memory cannot hold them (available_kib None: unknown, not refused)."""
    if available_kib is None or starting <= 0:
        return
    needed_mib = starting * MACHINE_MEMORY_MIB
    if available_kib // 1024 < needed_mib:
        raise SandboxError(
            f"size: got {size}, which starts {starting} machines needing about "
            f"{needed_mib} MiB ({MACHINE_MEMORY_MIB} MiB each), but the controller has "
            f"{available_kib // 1024} MiB available; expected a smaller size, or more free "
            "memory. Nothing was changed; a retry helps only once memory is freed",
            field="size",
            value=size,
        )


def mem_available_kib(meminfo: str) -> int | None:
    """MemAvailable of /proc/meminfo, in KiB (None when the kernel does not say)."""
    match = re.search(r"^MemAvailable:\s+(\d+) kB$", meminfo, re.MULTILINE)
    return int(match.group(1)) if match else None


def inotify_instances_needed(size: int) -> int:
    """The per-user inotify instance limit a fleet of `size` machines needs on the
    controller, with room for what the controller itself uses."""
    return INOTIFY_SPARE + INOTIFY_PER_MACHINE * size


def parse_subnet(text: str, size: int = 1) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError) as exc:
        raise SandboxError(
            f"subnet: got {text!r}, expected an IPv4 network such as 10.213.1.0/24 ({exc})",
            field="subnet",
            value=text,
        ) from exc
    if not any(net.subnet_of(private) for private in PRIVATE_RANGES):
        raise SandboxError(
            f"subnet: got {text!r}, expected a private range (10/8, 172.16/12, 192.168/16): "
            "sandbox machines must never use addresses that exist elsewhere",
            field="subnet",
            value=text,
        )
    # Machines .11 to .(10 + size), the broadcast address after them.
    if net.num_addresses < FIRST_HOST_OFFSET + size + 2:
        raise SandboxError(
            f"subnet: got {text!r}, which has no room for {size} machines from "
            f".{FIRST_HOST_OFFSET + 1}; expected a larger network (a /26 or larger holds "
            f"{MAX_SIZE}, a /24 is usual)",
            field="subnet",
            value=text,
        )
    return net


def machine_index(fleet: str, machine: str) -> int | None:
    """The index N of machine '<fleet>-N', or None if it is not one of this fleet's names."""
    match = re.fullmatch(re.escape(fleet) + r"-([1-9][0-9]?)", machine)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class MachineSpec:
    name: str
    index: int
    address: str
    prefixlen: int
    veth: str
    dir: str

    @property
    def root(self) -> str:
        return os.path.join(self.dir, "root")

    @property
    def upper(self) -> str:
        return os.path.join(self.dir, "upper")

    @property
    def work(self) -> str:
        return os.path.join(self.dir, "work")

    @property
    def console_log(self) -> str:
        return os.path.join(self.dir, "console.log")


@dataclass(frozen=True)
class FleetSpec:
    name: str
    size: int
    subnet: ipaddress.IPv4Network
    image: str
    state_dir: str

    @property
    def dir(self) -> str:
        return os.path.join(self.state_dir, self.name)

    @property
    def bridge(self) -> str:
        return f"{self.name}-br"

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def key(self) -> str:
        return os.path.join(self.dir, "id_ed25519")

    @property
    def known_hosts(self) -> str:
        return os.path.join(self.dir, "known_hosts")

    @property
    def config_file(self) -> str:
        return os.path.join(self.dir, "fleet.json")

    def machine(self, index: int) -> MachineSpec:
        name = f"{self.name}-{index}"
        return MachineSpec(
            name=name,
            index=index,
            address=str(self.subnet.network_address + FIRST_HOST_OFFSET + index),
            prefixlen=self.subnet.prefixlen,
            veth=f"v{name}",
            dir=os.path.join(self.dir, "machines", name),
        )

    def machines(self) -> list[MachineSpec]:
        return [self.machine(i) for i in range(1, self.size + 1)]

    def recorded_config(self) -> dict[str, str]:
        """What a running machine depends on: a change to either means a rebuild."""
        return {"subnet": str(self.subnet), "image": self.image}


# --------------------------------------------------------------------------- planning

# What a finished build writes into a machine's own layer (its overlay upper dir), the
# last of them last: a layer holding all three is a machine worth keeping, one missing
# any was left half-built by an interrupted run and holds nothing worth keeping.
LAYER_FILES = ("etc/ssh/ssh_host_ed25519_key.pub", "root/.ssh/authorized_keys", "etc/hosts")


@dataclass
class MachineState:
    """What was found on the controller for one machine name."""

    name: str
    pid: int | None = None
    mounted: bool = False
    netns: bool = False
    dir_exists: bool = False
    ssh_open: bool = False
    layer_intact: bool = False

    @property
    def running(self) -> bool:
        return self.pid is not None and self.mounted and self.netns and self.ssh_open

    @property
    def leftovers(self) -> bool:
        return bool(self.pid or self.mounted or self.netns or self.dir_exists)


@dataclass
class Plan:
    """What happens to each machine; `reasons` says why, for every one not kept."""

    keep: list[str] = field(default_factory=list)
    create: list[str] = field(default_factory=list)
    # Stopped (powered off, its process gone or hung): booted again on its own layer.
    boot: list[str] = field(default_factory=list)
    # Running, and a reboot was asked for: powered off cleanly, booted on its own layer.
    reboot: list[str] = field(default_factory=list)
    # Built again from the image: everything written on the machine is gone.
    rebuild: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return bool(self.create or self.boot or self.reboot or self.rebuild or self.remove)

    def put(self, action: list[str], name: str, reason: str) -> None:
        action.append(name)
        self.reasons[name] = reason


REBUILD_ASKED = "a rebuild was asked for"
REBOOT_ASKED = "a reboot was asked for"


def plan_present(
    spec: FleetSpec,
    observed: dict[str, MachineState],
    config_change: str,
    *,
    rebuild: Collection[str] = (),
    reboot: Collection[str] = (),
) -> Plan:
    """What state=present (and state=restarted) does to each machine.

    `config_change` describes how the fleet's recorded image or subnet differs from the
    spec ("" when it does not): every machine is then rebuilt, since its layer was made
    for the other image or address. Otherwise a machine is rebuilt only when its name is
    in `rebuild`, or when its layer is not intact. A stopped machine whose layer is
    intact is booted again, keeping what was written on it; a running one is kept, or
    rebooted when its name is in `reboot`.
    """
    plan = Plan()
    wanted = {m.name for m in spec.machines()}
    for machine in spec.machines():
        name = machine.name
        state = observed.get(name)
        if state is None or not state.leftovers:
            plan.put(plan.create, name, "it did not exist")
        elif name in rebuild:
            plan.put(plan.rebuild, name, REBUILD_ASKED)
        elif config_change:
            plan.put(plan.rebuild, name, config_change)
        elif state.running:
            if name in reboot:
                plan.put(plan.reboot, name, REBOOT_ASKED)
            else:
                plan.keep.append(name)
        elif not state.layer_intact:
            plan.put(
                plan.rebuild,
                name,
                "it was left half-built by an interrupted run (its layer lacks "
                f"{' or '.join(LAYER_FILES)}): nothing on it to keep",
            )
        elif state.pid is not None:
            plan.put(
                plan.boot,
                name,
                "its systemd-nspawn runs but the machine does not answer on port 22 "
                "(or lost its mount or namespace): stopped and booted again",
            )
        else:
            plan.put(plan.boot, name, "it was stopped (its systemd-nspawn is not running)")
    for name in sorted(
        (name for name, state in observed.items() if name not in wanted and state.leftovers),
        key=lambda n: machine_index(spec.name, n) or 0,
    ):
        plan.put(plan.remove, name, f"the fleet has {spec.size} machine(s)")
    return plan


def describe_config_change(recorded: dict | None, wanted: dict[str, str]) -> str:
    """How the fleet's recorded config differs from the wanted one ("" if it does not)."""
    if recorded is None or recorded == wanted:
        return ""
    changes = [
        f"its {key} changed from {recorded.get(key)!r} to {value!r}"
        for key, value in sorted(wanted.items())
        if recorded.get(key) != value
    ]
    return "; ".join(changes) or f"its recorded config {recorded!r} is not {wanted!r}"


def plan_absent(fleet: str, observed: dict[str, MachineState]) -> Plan:
    plan = Plan()
    names = [name for name, state in observed.items() if state.leftovers]
    for name in sorted(names, key=lambda n: machine_index(fleet, n) or 0):
        plan.put(plan.remove, name, "the fleet is torn down")
    return plan


def describe_plan(plan: Plan, *, applied: bool) -> str:
    """One line on what happened (or, when not `applied`, would happen) to each machine
    and why; a rebuild is written in capitals, since it throws a machine's state away."""
    parts = []
    for names, done in (
        (plan.create, "created"),
        (plan.boot, "booted again with its state"),
        (plan.reboot, "rebooted with its state"),
        (plan.rebuild, "REBUILT from the image, its state discarded"),
        (plan.remove, "removed"),
    ):
        for name in names:
            parts.append(f"{name} {done if applied else 'to be ' + done}: {plan.reasons[name]}")
    if plan.keep:
        parts.append(f"{', '.join(plan.keep)} running, kept as is")
    return "; ".join(parts) if parts else "no machine to change"


def overlapping_networks(
    subnet: ipaddress.IPv4Network,
    interfaces: Iterable[tuple[str, str]],
    own_bridge: str,
) -> list[str]:
    """Interfaces (other than our own bridge) holding an address or route inside `subnet`.

    `interfaces` yields (interface name, CIDR) pairs for addresses and routes.
    """
    conflicts = []
    for ifname, cidr in interfaces:
        if ifname == own_bridge:
            continue
        try:
            net = ipaddress.IPv4Network(cidr, strict=False)
        except ValueError:
            continue
        if net.prefixlen == 0:
            # The default route covers everything; it is not a conflict.
            continue
        if net.overlaps(subnet):
            conflicts.append(f"{cidr} on {ifname}")
    return conflicts


def parse_nspawn_cmdline(argv: Sequence[str]) -> str | None:
    """The machine name of a systemd-nspawn command line (`-M name` or `--machine=name`)."""
    if not argv or os.path.basename(argv[0]) != "systemd-nspawn":
        return None
    for i, arg in enumerate(argv):
        if arg in ("-M", "--machine") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--machine="):
            return arg.split("=", 1)[1]
    return None


def parse_mountinfo(text: str) -> list[str]:
    """Mount points listed in /proc/self/mountinfo, with octal escapes decoded."""
    points = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
    return points


def cgroup_roots(has_procs_file: Callable[[str], bool]) -> list[str]:
    """The cgroup hierarchies a machine needs its own cgroup in.

    With --keep-unit and no systemd on the controller, nspawn hands the machine the
    cgroup it was started in; without a cgroup of its own, every machine's systemd would
    manage the same tree (seen here: units of one machine failing with 219/CGROUP).
    Hybrid layout: the unified and name=systemd hierarchies; pure cgroup v2: the root.
    """
    hybrid = [
        root
        for root in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd")
        if has_procs_file(os.path.join(root, "cgroup.procs"))
    ]
    if hybrid:
        return hybrid
    return ["/sys/fs/cgroup"] if has_procs_file("/sys/fs/cgroup/cgroup.procs") else []


def machine_cgroups(roots: Sequence[str], fleet: str, machine: str) -> list[str]:
    return [os.path.join(root, "flipback", fleet, machine) for root in roots]


def image_key(suite: str, variant: str, packages: Sequence[str], mirror: str) -> str:
    """A short content key for a base image: it changes when its package list does."""
    recipe = {
        "version": IMAGE_RECIPE_VERSION,
        "suite": suite,
        "variant": variant,
        "packages": sorted(set(packages)),
        "mirror": mirror,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- the system


class Host:
    """Every operation that reads or changes the controller lives here."""

    def run(self, argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
        )
        if check and proc.returncode != 0:
            raise SandboxError(
                f"command failed: {' '.join(argv)} (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-800:]}",
                retryable=True,
            )
        return proc

    # -- observation
    def nspawn_pids(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
            except OSError:
                continue
            name = parse_nspawn_cmdline(argv)
            if name:
                found[name] = int(entry)
        return found

    def mount_points(self) -> set[str]:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            return set(parse_mountinfo(fh.read()))

    def netns_names(self) -> set[str]:
        try:
            return set(os.listdir("/run/netns"))
        except FileNotFoundError:
            return set()

    def listdir(self, path: str) -> list[str]:
        try:
            return os.listdir(path)
        except FileNotFoundError:
            return []

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def link_exists(self, ifname: str) -> bool:
        return os.path.exists(f"/sys/class/net/{ifname}")

    def tcp_open(self, address: str, port: int, timeout: float = 0.3) -> bool:
        try:
            with socket.create_connection((address, port), timeout=timeout):
                return True
        except OSError:
            return False

    def ssh_banner(self, address: str, timeout: float = 1.0) -> bool:
        try:
            with socket.create_connection((address, 22), timeout=timeout) as sock:
                sock.settimeout(timeout)
                return sock.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def interface_networks(self) -> list[tuple[str, str]]:
        pairs: list[tuple[str, str]] = []
        addrs = json.loads(self.run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]")
        for link in addrs:
            for info in link.get("addr_info", []):
                pairs.append((link["ifname"], f"{info['local']}/{info['prefixlen']}"))
        routes = json.loads(self.run(["ip", "-j", "-4", "route", "show"]).stdout or "[]")
        for route in routes:
            if route.get("dst") and route["dst"] != "default":
                pairs.append((route.get("dev", "?"), route["dst"]))
        return pairs

    def read_json(self, path: str) -> dict | None:
        try:
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def read_text(self, path: str) -> str:
        with open(path, encoding="utf-8") as fh:
            return fh.read()

    # -- changes
    def makedirs(self, path: str, mode: int = 0o755) -> None:
        os.makedirs(path, mode=mode, exist_ok=True)

    def write_file(self, path: str, content: str, mode: int = 0o644) -> None:
        tmp = f"{path}.tmp.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)

    def rmtree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def ensure_nspawn_runtime_dir(self) -> None:
        # nspawn refuses to clean its propagation directory on this disk unless
        # /run/systemd/nspawn is a tmpfs (measured; see DESIGN.md).
        os.makedirs(NSPAWN_RUNTIME_DIR, exist_ok=True)
        if NSPAWN_RUNTIME_DIR not in self.mount_points():
            self.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", NSPAWN_RUNTIME_DIR])

    def cgroups(self, fleet: str, machine: str) -> list[str]:
        return machine_cgroups(cgroup_roots(os.path.exists), fleet, machine)

    def remove_cgroups(self, paths: Sequence[str]) -> None:
        """Remove cgroups bottom-up (a cgroup can only be removed once it is empty)."""
        for path in paths:
            if not os.path.isdir(path):
                continue
            for dirpath, _dirs, _files in os.walk(path, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)

    def start_nspawn(self, machine: MachineSpec, cgroups: Sequence[str]) -> int:
        for path in cgroups:
            os.makedirs(path, exist_ok=True)

        def enter_cgroups() -> None:
            for path in cgroups:
                with open(os.path.join(path, "cgroup.procs"), "w", encoding="ascii") as fh:
                    fh.write("0")

        log = open(machine.console_log, "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "--boot",
                    "--quiet",
                    "--register=no",
                    "--keep-unit",
                    "--link-journal=no",
                    f"--directory={machine.root}",
                    "-M",
                    machine.name,
                    f"--network-namespace-path=/run/netns/{machine.name}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                # A module is single-threaded, so preexec_fn is safe here.
                preexec_fn=enter_cgroups,
            )
        finally:
            log.close()
        return proc.pid

    def signal(self, pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def alive(self, pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # A zombie left by our own Popen still answers kill(0); reap it.
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            return done == 0
        except ChildProcessError:
            return os.path.exists(f"/proc/{pid}")

    def overlay_lowerdirs(self) -> set[str]:
        dirs = set()
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                for option in line.split()[-1].split(","):
                    if option.startswith("lowerdir="):
                        dirs.update(option[len("lowerdir=") :].split(":"))
        return dirs

    def raise_inotify_instances(self, needed: int) -> int | None:
        """Raise the controller's fs.inotify.max_user_instances to `needed` when lower;
        the limit it had when raised, else None. Never lowered."""
        try:
            current = int(self.read_text(INOTIFY_INSTANCES).strip())
        except (OSError, ValueError):
            return None  # no such knob here: nothing to raise
        if current >= needed:
            return None
        with open(INOTIFY_INSTANCES, "w", encoding="ascii") as fh:
            fh.write(f"{needed}\n")
        return current

    def mem_available_kib(self) -> int | None:
        try:
            return mem_available_kib(self.read_text("/proc/meminfo"))
        except OSError:
            return None

    def glob(self, pattern: str) -> list[str]:
        return sorted(globmod.glob(pattern))

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def symlink(self, target: str, path: str) -> None:
        self.remove(path)
        os.symlink(target, path)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def now(self) -> float:
        return time.monotonic()

    def ssh_run_many(
        self,
        targets: Sequence[tuple[str, str]],
        command: str,
        key: str,
        known_hosts: str,
        timeout: float,
    ) -> dict[str, tuple[int, str]]:
        """Run `command` on every (name, address) at once over SSH; {name: (rc, output)}."""
        procs = {}
        for name, address in targets:
            procs[name] = subprocess.Popen(
                [
                    "ssh",
                    "-i",
                    key,
                    "-o",
                    "IdentitiesOnly=yes",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    f"UserKnownHostsFile={known_hosts}",
                    "-o",
                    "StrictHostKeyChecking=yes",
                    "-o",
                    f"ConnectTimeout={max(1, int(timeout))}",
                    f"root@{address}",
                    command,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        results = {}
        for name, proc in procs.items():
            try:
                out, _ = proc.communicate(timeout=timeout)
                results[name] = (proc.returncode, out.strip())
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                results[name] = (124, (out or "").strip() + " (timed out)")
        return results


# --------------------------------------------------------------------------- the fleet


class Fleet:
    """Desired-vs-actual for one fleet; `Host` does the work."""

    def __init__(
        self,
        spec: FleetSpec,
        host: Host,
        *,
        boot_timeout: float = 120,
        stop_timeout: float = 15,
    ) -> None:
        self.spec = spec
        self.host = host
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout

    # -- observation
    def observe(self, probe_ssh: bool = True) -> dict[str, MachineState]:
        fleet = self.spec.name
        states: dict[str, MachineState] = {}

        def state(name: str) -> MachineState:
            return states.setdefault(name, MachineState(name=name))

        for name, pid in self.host.nspawn_pids().items():
            if machine_index(fleet, name):
                state(name).pid = pid
        machines_dir = os.path.join(self.spec.dir, "machines")
        mounts = self.host.mount_points()
        for name in self.host.listdir(machines_dir):
            index = machine_index(fleet, name)
            if index:
                machine = self.spec.machine(index)
                st = state(name)
                st.dir_exists = True
                st.mounted = machine.root in mounts
                st.layer_intact = all(
                    self.host.exists(os.path.join(machine.upper, rel)) for rel in LAYER_FILES
                )
        for name in self.host.netns_names():
            if machine_index(fleet, name):
                state(name).netns = True
        for name, st in states.items():
            if probe_ssh and st.pid is not None and st.mounted and st.netns:
                st.ssh_open = self.host.tcp_open(self._machine(name).address, 22)
        return states

    def config_change(self) -> str:
        """How the image or subnet differs from what the machines were built for ("": same)."""
        return describe_config_change(
            self.host.read_json(self.spec.config_file), self.spec.recorded_config()
        )

    def targets(self, machines: Sequence[str] | None) -> list[str]:
        """The machines a reboot or a rebuild is for: every one of the fleet's, or those
        named, in index order."""
        names = [m.name for m in self.spec.machines()]
        if machines is None:
            return names
        unknown = [name for name in machines if name not in names]
        if unknown or not machines:
            raise SandboxError(
                f"machines: got {list(machines)!r}, expected one or more of this fleet's "
                f"machines ({', '.join(names)}), or no list for all of them"
                + (f"; not in the fleet: {', '.join(unknown)}" if unknown else "")
                + ". Nothing was changed",
                field="machines",
                value=list(machines),
            )
        return [name for name in names if name in machines]

    # -- preflight
    def check_subnet_free(self) -> None:
        conflicts = overlapping_networks(
            self.spec.subnet, self.host.interface_networks(), self.spec.bridge
        )
        if conflicts:
            raise SandboxError(
                f"subnet: {self.spec.subnet} is already in use on this machine "
                f"({', '.join(conflicts)}); expected a range nothing else uses. "
                "Choose another (e.g. -e sandbox_subnet=10.213.42.0/24); nothing was changed",
                field="subnet",
                value=str(self.spec.subnet),
                conflicts=conflicts,
            )

    # -- state=present
    def present(
        self, check_mode: bool, *, rebuild: bool = False, machines: Sequence[str] | None = None
    ) -> dict:
        """Every machine running: missing ones created, stopped ones booted again with
        their state. With `rebuild`, the machines named (default: all) are built again
        from the image, and lose their state."""
        if machines is not None and not rebuild:
            raise SandboxError(
                f"machines: got {list(machines)!r} with state=present and no rebuild; "
                "expected it only with state=restarted or rebuild=true (state=present "
                "always brings up every machine). Nothing was changed",
                field="machines",
                value=list(machines),
            )
        targets = self.targets(machines)
        return self._converge(check_mode, rebuild=targets if rebuild else [], reboot=[])

    # -- state=restarted
    def restarted(
        self, check_mode: bool, *, rebuild: bool = False, machines: Sequence[str] | None = None
    ) -> dict:
        """What present does, and then every running machine named (default: all) is
        powered off cleanly and booted again on its own layer, keeping its state."""
        targets = self.targets(machines)
        return self._converge(check_mode, rebuild=targets if rebuild else [], reboot=targets)

    def _converge(self, check_mode: bool, *, rebuild: list[str], reboot: list[str]) -> dict:
        observed = self.observe()
        change = self.config_change()
        plan = plan_present(self.spec, observed, change, rebuild=rebuild, reboot=reboot)
        bridge_missing = not self.host.link_exists(self.spec.bridge)
        if bridge_missing or change:
            # A changed subnet must be as free as a new one.
            self.check_subnet_free()
        changed = plan.changes or bridge_missing
        if check_mode or not changed:
            return self._result(plan, changed, applied=False)
        # Machines already running hold their memory already; the others will need theirs.
        running = sum(
            1
            for machine in self.spec.machines()
            if (state := observed.get(machine.name)) and state.pid is not None
        )
        check_memory(self.spec.size, self.spec.size - running, self.host.mem_available_kib())

        # One shutdown for all of them at once (a clean one takes about 2 s): machines
        # going away or rebuilt, machines rebooted, and stopped machines whose nspawn
        # still runs without answering.
        began = self.host.now()
        stopping = plan.remove + plan.rebuild + plan.reboot + plan.boot
        pids = {observed[n].pid: n for n in stopping if observed[n].pid is not None}
        killed = [pids[pid] for pid in self._stop(list(pids))]
        stopped_at = self.host.now()
        for name in plan.remove + plan.rebuild:
            self._remove_machine(self._machine(name), observed[name])
        self.host.makedirs(self.spec.dir, 0o700)
        self.host.ensure_nspawn_runtime_dir()
        self.host.raise_inotify_instances(inotify_instances_needed(self.spec.size))
        self._ensure_key()
        self._ensure_bridge(readdress=bool(change))
        self.host.write_file(
            self.spec.config_file, json.dumps(self.spec.recorded_config(), indent=2) + "\n"
        )
        fresh = set(plan.create + plan.rebuild)
        to_start = sorted(
            (self._machine(n) for n in [*plan.create, *plan.rebuild, *plan.boot, *plan.reboot]),
            key=lambda m: m.index,
        )
        for machine in to_start:
            if machine.name in fresh:
                self._prepare_machine(machine)
            else:
                self._revive_machine(machine, observed[machine.name])
            self.host.start_nspawn(machine, self.host.cgroups(self.spec.name, machine.name))
        self._write_known_hosts()
        booting_at = self.host.now()
        self._wait_booted(to_start)
        result = self._result(plan, True, applied=True)
        result["timings"] = {
            "stop": round(stopped_at - began, 3),
            "boot": round(self.host.now() - booting_at, 3),
            "total": round(self.host.now() - began, 3),
        }
        if stopping or to_start:
            result["msg"] += (
                f" (stopping took {result['timings']['stop']:.1f} s, booting until sshd "
                f"answered and systemd ran {result['timings']['boot']:.1f} s)"
            )
        result["warnings"] = [
            f"{name} did not power off within {self.stop_timeout:g}s and was killed "
            "(SIGKILL), like pulling its plug: writes it had not synced may be lost"
            for name in killed
        ] + [
            f"{name} was rebuilt from the image because {plan.reasons[name]}: everything "
            "written on it since it was built is gone"
            for name in plan.rebuild
            if plan.reasons[name] != REBUILD_ASKED
        ]
        return result

    # -- state=absent
    def absent(self, check_mode: bool) -> dict:
        # Absent has no real subnet to probe: an SSH probe would leave the fleet.
        observed = self.observe(probe_ssh=False)
        plan = plan_absent(self.spec.name, observed)
        leftovers = self.host.exists(self.spec.dir) or self.host.link_exists(self.spec.bridge)
        changed = plan.changes or leftovers
        if check_mode or not changed:
            return self._result(plan, changed, applied=False)
        self._destroy_machines(plan.remove, observed)
        if self.host.link_exists(self.spec.bridge):
            self.host.run(["ip", "link", "del", self.spec.bridge])
        self.host.remove_cgroups(
            [os.path.dirname(path) for path in self.host.cgroups(self.spec.name, "-")]
        )
        self.host.rmtree(self.spec.dir)
        return self._result(plan, True, applied=True)

    # -- steps
    def _machine(self, name: str) -> MachineSpec:
        index = machine_index(self.spec.name, name)
        assert index is not None, name
        return self.spec.machine(index)

    def _destroy_machines(self, names: list[str], observed: dict[str, MachineState]) -> None:
        """Stop all of them at once (a clean shutdown takes about 2 s), then clean up each."""
        self._stop([observed[n].pid for n in names if observed[n].pid is not None])
        for name in names:
            self._remove_machine(self._machine(name), observed[name])

    def _remove_machine(self, machine: MachineSpec, state: MachineState) -> None:
        mounted = state.mounted or machine.root in self.host.mount_points()
        if mounted and self.host.run(["umount", machine.root], check=False).returncode != 0:
            # Something still holds the mount (a shell cd'ed into it); detach it
            # lazily so the machine can be rebuilt now.
            self.host.run(["umount", "--lazy", machine.root])
        self._remove_network(machine, state)
        self.host.remove_cgroups(self.host.cgroups(self.spec.name, machine.name))
        self.host.rmtree(machine.dir)

    def _remove_network(self, machine: MachineSpec, state: MachineState) -> None:
        if state.netns or machine.name in self.host.netns_names():
            # Deleting the namespace also destroys both ends of the veth pair.
            self.host.run(["ip", "netns", "del", machine.name])
        if self.host.link_exists(machine.veth):
            # The kernel may still be destroying the pair after the namespace went away,
            # so "Cannot find device" here is success.
            proc = self.host.run(["ip", "link", "del", machine.veth], check=False)
            if proc.returncode != 0 and self.host.link_exists(machine.veth):
                raise SandboxError(
                    f"could not delete veth {machine.veth}: {proc.stderr.strip()}; expected "
                    "it gone with its namespace. Retrying is safe: the machine's layer is "
                    "untouched",
                    retryable=True,
                )

    def _stop(self, pids: list[int]) -> list[int]:
        """Stop machines cleanly, all at once; the pids that had to be killed."""
        # SIGTERM makes nspawn send SIGRTMIN+3 to the machine's systemd (its default
        # --kill-signal with --boot): an orderly shutdown, units stopped, disks synced.
        for pid in pids:
            self.host.signal(pid, signal.SIGTERM)
        deadline = self.host.now() + self.stop_timeout
        running = [pid for pid in pids if self.host.alive(pid)]
        while running and self.host.now() < deadline:
            self.host.sleep(0.1)
            running = [pid for pid in running if self.host.alive(pid)]
        killed = list(running)
        for pid in running:
            self.host.signal(pid, signal.SIGKILL)
        kill_deadline = self.host.now() + 5
        while running and self.host.now() < kill_deadline:
            self.host.sleep(0.1)
            running = [pid for pid in running if self.host.alive(pid)]
        if running:
            raise SandboxError(
                f"systemd-nspawn processes {running} survived SIGKILL; expected them gone",
                retryable=True,
            )
        return killed

    def _ensure_key(self) -> None:
        if not self.host.exists(self.spec.key):
            self.host.run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    f"flipback-sandbox-{self.spec.name}",
                    "-f",
                    self.spec.key,
                ]
            )

    def _ensure_bridge(self, readdress: bool) -> None:
        bridge = self.spec.bridge
        if not self.host.link_exists(bridge):
            self.host.run(["ip", "link", "add", bridge, "type", "bridge"])
        elif readdress:
            # `addr replace` adds the new gateway beside the old one; the old
            # subnet's address and route would otherwise stay on the bridge.
            self.host.run(["ip", "addr", "flush", "dev", bridge])
        self.host.run(
            [
                "ip",
                "addr",
                "replace",
                f"{self.spec.gateway}/{self.spec.subnet.prefixlen}",
                "dev",
                bridge,
            ]
        )
        self.host.run(["ip", "link", "set", bridge, "up"])

    def _mount(self, machine: MachineSpec) -> None:
        self.host.run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={self.spec.image},upperdir={machine.upper},workdir={machine.work}",
                machine.root,
            ]
        )

    def _prepare_machine(self, machine: MachineSpec) -> None:
        """A new machine: an empty layer over the image, with its own keys and name."""
        host = self.host
        host.rmtree(machine.dir)
        for path in (machine.upper, machine.work, machine.root):
            host.makedirs(path)
        self._mount(machine)
        # Every machine gets its own SSH host key (the image ships none).
        host.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                machine.name,
                "-f",
                os.path.join(machine.root, "etc/ssh/ssh_host_ed25519_key"),
            ]
        )
        ssh_dir = os.path.join(machine.root, "root/.ssh")
        host.makedirs(ssh_dir, 0o700)
        host.write_file(
            os.path.join(ssh_dir, "authorized_keys"), host.read_text(self.spec.key + ".pub"), 0o600
        )
        host.write_file(os.path.join(machine.root, "etc/hostname"), machine.name + "\n")
        # Written last of LAYER_FILES: its presence says the layer was finished.
        host.write_file(
            os.path.join(machine.root, "etc/hosts"),
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{machine.name}\n"
            f"::1\tlocalhost ip6-localhost ip6-loopback\n",
        )
        self._setup_network(machine)

    def _revive_machine(self, machine: MachineSpec, state: MachineState) -> None:
        """Make a stopped machine bootable again on its own layer.

        The upper dir holds everything written on the machine and is kept as it is; the
        mount, namespace, veth and cgroups around it are made again where missing (a
        reboot of the controller loses them all). The network is always made anew: it
        holds no state, and a fresh veth is attached to the bridge as it is now.
        """
        host = self.host
        self._remove_network(machine, state)
        host.remove_cgroups(host.cgroups(self.spec.name, machine.name))
        for path in (machine.work, machine.root):
            host.makedirs(path)
        if machine.root not in host.mount_points():
            self._mount(machine)
        # The fleet's key may have been made anew since the machine was built; root
        # keeps any other key it was given.
        pub = host.read_text(self.spec.key + ".pub")
        keys = os.path.join(machine.root, "root/.ssh/authorized_keys")
        current = host.read_text(keys)
        if pub.strip() not in current.splitlines():
            sep = "" if not current or current.endswith("\n") else "\n"
            host.write_file(keys, current + sep + pub, 0o600)
        self._setup_network(machine)

    def _setup_network(self, machine: MachineSpec) -> None:
        host = self.host
        ns = machine.name
        host.run(["ip", "netns", "add", ns])
        host.run(
            [
                "ip",
                "link",
                "add",
                machine.veth,
                "type",
                "veth",
                "peer",
                "name",
                "host0",
                "netns",
                ns,
            ]
        )
        host.run(["ip", "link", "set", machine.veth, "master", self.spec.bridge, "up"])
        host.run(
            [
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                f"{machine.address}/{machine.prefixlen}",
                "dev",
                "host0",
            ]
        )
        host.run(["ip", "-n", ns, "link", "set", "host0", "up"])
        host.run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _write_known_hosts(self) -> None:
        lines = []
        for machine in self.spec.machines():
            pub = os.path.join(machine.upper, "etc/ssh/ssh_host_ed25519_key.pub")
            if self.host.exists(pub):
                keytype, key = self.host.read_text(pub).split()[:2]
                lines.append(f"{machine.address} {keytype} {key}\n")
        self.host.write_file(self.spec.known_hosts, "".join(lines), 0o644)

    def _wait_booted(self, machines: list[MachineSpec]) -> None:
        """Wait until each machine's sshd answers and its systemd has finished booting."""
        if not machines:
            return
        deadline = self.host.now() + self.boot_timeout
        waiting = {m.name: m for m in machines}
        while waiting:
            for name, machine in list(waiting.items()):
                if self.host.ssh_banner(machine.address):
                    del waiting[name]
            if not waiting:
                break
            if self.host.now() >= deadline:
                raise self._boot_error(list(waiting.values()), "sshd never answered")
            self.host.sleep(0.2)
        remaining = max(5.0, deadline - self.host.now())
        results = self.host.ssh_run_many(
            [(m.name, m.address) for m in machines],
            "systemctl is-system-running --wait",
            self.spec.key,
            self.spec.known_hosts,
            remaining,
        )
        bad = [m for m in machines if results[m.name][1].splitlines()[-1:] != ["running"]]
        if bad:
            observed = {m.name: results[m.name][1][-300:] for m in bad}
            raise self._boot_error(bad, f"systemd did not reach 'running' (observed: {observed})")

    def _boot_error(self, machines: list[MachineSpec], what: str) -> SandboxError:
        tails = {}
        for machine in machines:
            try:
                tails[machine.name] = self.host.read_text(machine.console_log)[-1500:]
            except OSError:
                tails[machine.name] = ""
        return SandboxError(
            f"machines {', '.join(m.name for m in machines)} did not boot within "
            f"{self.boot_timeout:g}s: {what}; expected sshd on port 22 and systemd 'running'. "
            "Re-running the same command is safe: it boots machines that are not running "
            "again, keeping their state (rebuild=true, -e sandbox_rebuild=true, builds them "
            "again from the image instead)",
            retryable=True,
            console=tails,
        )

    def _result(self, plan: Plan, changed: bool, *, applied: bool) -> dict:
        return {
            "changed": changed,
            "msg": describe_plan(plan, applied=applied),
            "fleet": self.spec.name,
            "bridge": self.spec.bridge,
            "subnet": str(self.spec.subnet),
            "key": self.spec.key,
            "known_hosts": self.spec.known_hosts,
            "machines": [{"name": m.name, "address": m.address} for m in self.spec.machines()],
            "kept": plan.keep,
            "created": plan.create,
            "booted": plan.boot,
            "rebooted": plan.reboot,
            "rebuilt": plan.rebuild,
            "removed": plan.remove,
            "reasons": plan.reasons,
            "timings": {},
        }


# --------------------------------------------------------------------------- base image


# Written into the image after debootstrap: sshd takes only keys, and only the
# per-machine host key; the apt timers are masked because machines have no
# network to reach a mirror.
IMAGE_FILES = {
    "etc/ssh/sshd_config.d/flipback-sandbox.conf": (
        "# Written by the flipback sandbox image build.\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "UseDNS no\n"
    ),
}
IMAGE_MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer")


@dataclass(frozen=True)
class ImageSpec:
    suite: str
    variant: str
    packages: tuple[str, ...]
    mirror: str
    images_dir: str
    cache_dir: str

    @property
    def key(self) -> str:
        return image_key(self.suite, self.variant, self.packages, self.mirror)

    @property
    def path(self) -> str:
        return os.path.join(self.images_dir, self.key)

    def debootstrap_argv(self, target: str) -> list[str]:
        argv = [
            "debootstrap",
            f"--variant={self.variant}",
            f"--cache-dir={self.cache_dir}",
            f"--include={','.join(sorted(set(self.packages)))}",
            self.suite,
            target,
        ]
        return [*argv, self.mirror] if self.mirror else argv


def validate_packages(packages: Sequence[str]) -> tuple[str, ...]:
    bad = [p for p in packages if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", p)]
    if bad or not packages:
        raise SandboxError(
            f"packages: got {list(packages)!r}, expected a non-empty list of Debian package "
            f"names (invalid: {bad})",
            field="packages",
            value=list(packages),
        )
    return tuple(packages)


class Image:
    """A debootstrapped base image, cached under a key of its package list."""

    def __init__(self, spec: ImageSpec, host: Host) -> None:
        self.spec = spec
        self.host = host

    def present(self) -> bool:
        return self.host.read_json(os.path.join(self.spec.path, IMAGE_MARKER)) is not None

    def unused_images(self, building: str) -> list[str]:
        """Other cached images of this suite, and builds left by killed runs, that no
        overlay mount uses. Another suite's image is kept: fleets of two suites (a
        bookworm and a trixie scenario) take turns on one controller, and each would
        otherwise throw the other's image away."""
        in_use = self.host.overlay_lowerdirs()
        stale = []
        for entry in sorted(self.host.listdir(self.spec.images_dir)):
            path = os.path.join(self.spec.images_dir, entry)
            if entry == self.spec.key or path == building or path in in_use:
                continue
            marker = self.host.read_json(os.path.join(path, IMAGE_MARKER)) or {}
            if marker.get("suite", self.spec.suite) != self.spec.suite:
                continue
            stale.append(path)
        return stale

    def ensure(self, check_mode: bool) -> dict:
        result = {"path": self.spec.path, "key": self.spec.key, "pruned": []}
        if self.present():
            result["changed"] = False
            return result
        result["changed"] = True
        if check_mode:
            return result
        self.host.makedirs(self.spec.images_dir)
        self.host.makedirs(self.spec.cache_dir)
        tmp = os.path.join(self.spec.images_dir, f".build-{self.spec.key}-{os.getpid()}")
        self.host.rmtree(tmp)
        proc = self.host.run(self.spec.debootstrap_argv(tmp), check=False)
        if proc.returncode != 0:
            self.host.rmtree(tmp)
            raise SandboxError(
                f"debootstrap of {self.spec.suite} failed (exit {proc.returncode}); "
                f"expected a complete base image. Last output: "
                f"{(proc.stdout + proc.stderr).strip()[-1200:]}",
                retryable=True,
            )
        self._customize(tmp)
        self.host.write_file(
            os.path.join(tmp, IMAGE_MARKER),
            json.dumps(
                {
                    "key": self.spec.key,
                    "suite": self.spec.suite,
                    "packages": sorted(set(self.spec.packages)),
                },
                indent=2,
            )
            + "\n",
        )
        result["pruned"] = self.unused_images(building=tmp)
        for path in result["pruned"]:
            self.host.rmtree(path)
        self.host.rename(tmp, self.spec.path)
        return result

    def _customize(self, root: str) -> None:
        for path in self.host.glob(os.path.join(root, "etc/ssh/ssh_host_*")):
            self.host.remove(path)
        for rel, content in IMAGE_FILES.items():
            self.host.makedirs(os.path.dirname(os.path.join(root, rel)))
            self.host.write_file(os.path.join(root, rel), content)
        for unit in IMAGE_MASKED_UNITS:
            self.host.symlink("/dev/null", os.path.join(root, "etc/systemd/system", unit))
        # An empty machine-id makes each machine generate its own at boot.
        self.host.write_file(os.path.join(root, "etc/machine-id"), "", 0o444)
        for deb in self.host.glob(os.path.join(root, "var/cache/apt/archives/*.deb")):
            self.host.remove(deb)
