"""HTTPS on the public port (nginx.tls) and the access log's client, on real machines.

After test_config.py and test_day2.py (the rotated release is live, plain HTTP), the
module fixture runs once on the fleet: a self-signed certificate made on the
controller is copied to both machines (key 0600 root); a deploy naming a certificate
that is not on the hosts is refused before any host changes; a deploy with TLS and
the access log goes live through Gate 2 over HTTPS; requests from the controller
reach it; a rollback brings the plain site back. Each test then checks one machine.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import testinfra
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import flipback_testlib as lib

# Exactly what test_config.py deployed last (the live release's env).
AS_ROTATED = {"hello_greeting": "rotated: ünïcode\tand tab"}
SERVER_NAME = "hello.test"
TLS_DIR = "/etc/flipback-test-tls"
TLS = {"certificate": f"{TLS_DIR}/hello.pem", "key": f"{TLS_DIR}/hello.key"}
MISSING = {**TLS, "certificate": f"{TLS_DIR}/missing.pem"}
SITE = "/etc/nginx/conf.d/flipback-hello.conf"


def _self_signed(where: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = where / "hello.pem", where / "hello.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _host(name: str):
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory}")


def _ad_hoc(module: str, args: str) -> None:
    """One module on every machine of the scenario."""
    run = subprocess.run(
        ["ansible", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "all", "-m", module, "-a", args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert run.returncode == 0, lib.output(run)[-2000:]


def _deploy(nginx: dict, access_log: bool = False):
    extra = {**AS_ROTATED, "hello_nginx": nginx, "hello_access_log": access_log}
    return lib.run_fleet_playbook("deploy.yml", "-e", json.dumps(extra))


def _addresses() -> dict[str, str]:
    config = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "instance_config.yml"
    return {i["instance"]: i["address"] for i in yaml.safe_load(config.read_text())}


def _https_get(address: str, path: str) -> tuple[int, dict[str, str]]:
    """GET over HTTPS from the controller, unverified, with SNI and Host hello.test."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(address, lib.PORT, timeout=10, context=context)
    try:
        conn.request("GET", path, headers={"Host": SERVER_NAME})
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


@pytest.fixture(scope="module")
def tls_story(tmp_path_factory):
    where = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(where)
    _ad_hoc("ansible.builtin.file", f"path={TLS_DIR} state=directory mode=0755")
    _ad_hoc("ansible.builtin.copy", f"src={cert} dest={TLS['certificate']} mode=0644")
    _ad_hoc("ansible.builtin.copy", f"src={key} dest={TLS['key']} owner=root mode=0600")
    story: dict = {"plain_site": {}, "snapshots": {}, "live_before": {}}
    hosts = sorted(_addresses())
    for name in hosts:
        host = _host(name)
        story["plain_site"][name] = host.file(SITE).content_string
        story["snapshots"][name] = lib.snapshot(host)
        story["live_before"][name] = lib.current_id(host)
    story["missing"] = _deploy({"server_name": SERVER_NAME, "tls": MISSING})
    story["after_missing"] = {name: lib.snapshot(_host(name)) for name in hosts}
    story["tls"] = _deploy({"server_name": SERVER_NAME, "tls": TLS}, access_log=True)
    story["requests"] = {}
    for name, address in _addresses().items():
        path = f"/health?from=controller-{uuid.uuid4().hex[:12]}"
        status, headers = _https_get(address, path)
        story["requests"][name] = {"path": path, "status": status, "headers": headers}
    story["tls_release"] = {name: lib.current_id(_host(name)) for name in hosts}
    story["tls_site"] = {name: _host(name).file(SITE).content_string for name in hosts}
    # Read now: after the rollback its instance retires (it was rolled away from).
    story["cmdline"] = {
        name: _host(name).run(
            "tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value "
            f"hello@{story['tls_release'][name]}.service)/cmdline"
        )
        for name in hosts
    }
    story["rollback"] = lib.run_fleet_playbook("rollback.yml")
    return story


def test_a_certificate_missing_on_the_hosts_is_refused_before_any_host_changes(host, tls_story):
    run = tls_story["missing"]
    out = lib.output(run)
    name = host.backend.get_hostname()
    assert run.returncode != 0, out[-3000:]
    assert (
        f"nginx.tls.certificate: got '{MISSING['certificate']}', which on this host is missing"
        in out
    ), out[-3000:]
    assert "retrying as-is fails the same way" in out
    # Nothing changed: /srv, the units, the sites byte for byte; no switch was tried.
    assert tls_story["after_missing"][name] == tls_story["snapshots"][name]
    assert "switched to" not in out, out[-3000:]


def test_the_tls_release_went_live_through_gate_2_over_https(host, tls_story):
    run = tls_story["tls"]
    out = lib.output(run)
    name = host.backend.get_hostname()
    assert run.returncode == 0, out[-3000:]
    release = tls_story["tls_release"][name]
    assert release != tls_story["live_before"][name]
    assert f"{name} hello: switched to {release}" in out, out[-3000:]
    site = tls_story["tls_site"][name]
    assert "listen 8000 ssl;" in site and f"ssl_certificate_key {TLS['key']};" in site, site
    config = lib.manifest(host, release)["config"]
    assert config["nginx"]["tls"] == TLS
    assert config["access_log"] is True


def test_https_answers_with_the_release_header_from_the_controller(host, tls_story):
    name = host.backend.get_hostname()
    answer = tls_story["requests"][name]
    assert answer["status"] == 200, answer
    assert answer["headers"]["x-flipback-release"] == tls_story["tls_release"][name]


def test_the_access_log_names_the_client_nginx_saw(host, tls_story):
    name = host.backend.get_hostname()
    path = tls_story["requests"][name]["path"]
    # The controller as this machine sees it: the source address of our SSH session.
    controller = host.run("echo $SSH_CONNECTION").stdout.split()[0]
    unit = f"hello@{tls_story['tls_release'][name]}.service"
    deadline = time.monotonic() + 10
    while True:
        # journald may take a moment to have the line.
        found = host.run(f"journalctl --no-pager --output=cat -u {unit} -g {path.split('=')[1]}")
        if found.stdout.strip() or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert f'{controller}:0 - "GET {path} HTTP/1.1" 200' in found.stdout, (
        found.stdout,
        lib.journal(host, unit),
    )


def test_uvicorn_trusts_nginx_s_headers_on_its_socket(host, tls_story):
    # systemd passes '*' unquoted, as one argument.
    argv = tls_story["cmdline"][host.backend.get_hostname()]
    assert argv.rc == 0, argv.stderr
    assert "--proxy-headers\n--forwarded-allow-ips\n*\n" in argv.stdout, argv.stdout


def test_the_rollback_brought_the_plain_site_back(host, tls_story):
    run = tls_story["rollback"]
    out = lib.output(run)
    name = host.backend.get_hostname()
    assert run.returncode == 0, out[-3000:]
    assert lib.current_id(host) == tls_story["live_before"][name]
    assert host.file(SITE).content_string == tls_story["plain_site"][name]
    assert lib.public_health(host)["release"] == tls_story["live_before"][name]
