"""The sandbox machines are real Debian 12 systems with systemd, sshd, python3 and nginx."""

from __future__ import annotations


def test_systemd_is_pid_1_and_running(host):
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"
    state = host.run("systemctl is-system-running")
    failed = host.run("systemctl --failed --no-legend").stdout
    assert state.stdout.strip() == "running", f"systemd {state.stdout.strip()}; failed:\n{failed}"


def test_debian_12(host):
    assert host.system_info.distribution == "debian"
    assert host.system_info.release.startswith("12")


def test_sshd_listening(host):
    assert host.service("ssh").is_running
    assert host.socket("tcp://0.0.0.0:22").is_listening


def test_python3_and_venv_present(host):
    version = host.run("python3 -c 'import sys, venv; print(sys.version_info[:2])'")
    assert version.rc == 0, version.stderr
    assert version.stdout.strip() == "(3, 11)"


def test_nginx_present_and_running(host):
    assert host.package("nginx-light").is_installed
    nginx = host.service("nginx")
    if not nginx.is_running:
        journal = host.run("journalctl -u nginx --no-pager -n 30").stdout
        raise AssertionError(f"nginx is not running:\n{journal}")


def test_no_route_beyond_the_fleet(host):
    routes = host.run("ip -4 route show").stdout
    assert "default" not in routes, routes
