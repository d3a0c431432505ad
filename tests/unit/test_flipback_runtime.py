"""Unit tests of module_utils/flipback_runtime.py: a release's configuration, its files, its id.

Everything under test is pure. `a_release()` below is what release_config works out and
release_stage is given (id, build, config, env file): the stage, prepare, status and
release tests build their configured releases with it.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest
from ansible.module_utils.flipback_common import FlipbackError
from ansible.module_utils.flipback_runtime import (
    CONFIG_ARGUMENT_SPEC,
    ENV_DIGEST_ROUNDS,
    MAX_ENV_VALUE,
    NGINX_DEFAULTS,
    RESERVED_ENV_NAMES,
    RESERVED_ENV_PREFIXES,
    SITE_DIR,
    UNIT_DIR,
    ConfigInvalid,
    app_and_factory,
    config_changes,
    config_digest,
    env_digest,
    env_file_text,
    env_path,
    env_problems,
    instance_unit,
    masked_config,
    normalize_processes,
    parse_env_file,
    process_unit,
    process_unit_text,
    public_tls,
    release_id_for,
    reserved_env_name,
    resolve_params,
    resolve_release,
    retire_timer,
    run_config,
    service_home,
    sha256_text,
    site_path,
    site_text,
    staged_files,
    start_instance,
    static_dirs,
    stop_instance,
    unit_path,
    unit_text,
)

SERVICE = "shop"
HOME = "/srv/shop"
BUILD_ID = "20261129T141500-3f2a9c1d0e"
OTHER_BUILD_ID = "20261130T090000-aaaaaaaaaa"
SECRET = "s3cr3t-hunter2"
W = "flipback_services (shop)"
RELEASE_ID_RE = re.compile(r"[0-9]{8}T[0-9]{6}-[0-9a-f]{10}")


# =========================================================================== shared helper


@dataclass(frozen=True)
class Release:
    """A release as release_config works it out: what release_stage is given."""

    id: str
    build_id: str
    config: dict[str, Any]
    env_text: str


def a_release(
    service: str,
    root: str,
    *,
    env: dict[str, str] | None = None,
    build_id: str = BUILD_ID,
    user: str = "nobody",
    app: str = "app:app",
    factory: bool = False,
    workers: int = 1,
    port: int = 8000,
    processes: dict[str, str] | None = None,
    process_start_seconds: float = 3,
) -> Release:
    """The release `build_id` becomes on a host whose service root is `root`, with the
    env file the flipback_env_file filter renders for it."""
    env = dict(env or {})
    resolved = resolve_release(
        service=service,
        user=user,
        app=app,
        factory=factory,
        workers=workers,
        port=port,
        env=env,
        build_id=build_id,
        home=root,
        processes=processes,
        process_start_seconds=process_start_seconds,
    )
    return Release(resolved["release"], build_id, resolved["config"], env_file_text(env))


# =========================================================================== env_problems


def test_env_problems_of_no_env():
    assert env_problems(W, None) == ({}, [])
    assert env_problems(W, {}) == ({}, [])


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        pytest.param([f"DB={SECRET}"], "list", id="list"),
        pytest.param(f"DB={SECRET}", "str", id="string"),
        pytest.param(3, "int", id="number"),
    ],
)
def test_env_problems_of_what_is_not_a_mapping(env, kind):
    clean, problems = env_problems(W, env)

    assert clean == {}
    assert problems == [f"{W}.env: got a {kind}, expected a mapping NAME: value"]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("1DB", id="leading-digit"),
        pytest.param("DB=URL", id="equals"),
        pytest.param("DB-URL", id="dash"),
        pytest.param("DB URL", id="space"),
        pytest.param("", id="empty"),
        pytest.param("DÉBUT", id="non-ascii"),
        pytest.param("DB.URL", id="dot"),
        pytest.param(5, id="not-a-string"),
        pytest.param(None, id="none"),
    ],
)
def test_env_problems_of_a_bad_name(name):
    clean, problems = env_problems(W, {name: SECRET, "OK": "1"})

    assert clean == {"OK": "1"}
    [problem] = problems
    assert problem.startswith(f"{W}.env: got {name!r}, expected ")
    assert "letters, digits and '_'" in problem
    assert SECRET not in problem


@pytest.mark.parametrize("name", sorted(RESERVED_ENV_NAMES))
def test_env_problems_of_a_reserved_name(name):
    clean, problems = env_problems(W, {name: SECRET})

    assert clean == {}
    [problem] = problems
    assert problem.startswith(f"{W}.env.{name}: got a reserved name, expected a name of the app's")
    assert SECRET not in problem


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("FLIPBACK_RELEASE", id="flipback"),
        pytest.param("FLIPBACK_", id="flipback-prefix-alone"),
        pytest.param("LD_PRELOAD", id="loader"),
        pytest.param("LD_LIBRARY_PATH", id="loader-path"),
        pytest.param("UVICORN_WORKERS", id="uvicorn"),
        pytest.param("LISTEN_FDS", id="socket-activation"),
        pytest.param("WATCHDOG_USEC", id="watchdog"),
        pytest.param("SYSTEMD_EXEC_PID", id="systemd"),
    ],
)
def test_env_problems_of_a_reserved_prefix(name):
    clean, problems = env_problems(W, {name: "1"})

    assert clean == {}
    [problem] = problems
    assert problem.startswith(f"{W}.env.{name}: got a reserved name")
    # The message says what is reserved, every prefix included.
    for prefix in RESERVED_ENV_PREFIXES:
        assert prefix in problem


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("path", id="lowercase-of-reserved"),
        pytest.param("MY_PATH", id="reserved-inside"),
        pytest.param("PATH_EXTRA", id="reserved-as-prefix"),
        pytest.param("LD", id="prefix-without-underscore"),
        pytest.param("OLD_VALUE", id="prefix-inside"),
        pytest.param("PYTHONWARNINGS", id="python-not-reserved"),
        pytest.param("_", id="underscore"),
        pytest.param("a1", id="lowercase-digit"),
    ],
)
def test_env_problems_allows_names_that_only_look_reserved(name):
    assert reserved_env_name(name) is False
    assert env_problems(W, {name: "1"}) == ({name: "1"}, [])


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        pytest.param(True, "bool", id="true"),
        pytest.param(False, "bool", id="false"),
        pytest.param(None, "NoneType", id="none"),
        pytest.param([SECRET], "list", id="list"),
        pytest.param({"password": SECRET}, "dict", id="dict"),
        pytest.param(b"bytes", "bytes", id="bytes"),
    ],
)
def test_env_problems_of_a_value_that_is_no_string_or_number(value, kind):
    clean, problems = env_problems(W, {"DB": value})

    assert clean == {}
    assert problems == [
        f"{W}.env.DB: got a {kind}, expected a string or number (quote yes/no/true/false in YAML)"
    ]


@pytest.mark.parametrize(
    ("value", "code"),
    [
        pytest.param(f"a\0{SECRET}", "U+0000", id="nul"),
        pytest.param(f"line\n{SECRET}", "U+000A", id="newline"),
        pytest.param(f"{SECRET}\r", "U+000D", id="cr"),
        pytest.param(f"{SECRET}\x1b[0m", "U+001B", id="escape"),
        pytest.param(f"{SECRET}\x7f", "U+007F", id="delete"),
        pytest.param(f"\x01{SECRET}", "U+0001", id="soh"),
        pytest.param(f"{SECRET}\x0b", "U+000B", id="vertical-tab"),
        pytest.param(f"{SECRET}\x1f", "U+001F", id="unit-separator"),
        pytest.param(f"ok\tthen\n{SECRET}", "U+000A", id="tab-then-newline"),
    ],
)
def test_env_problems_of_a_control_character(value, code):
    clean, problems = env_problems(W, {"DB": value})

    assert clean == {}
    [problem] = problems
    assert problem.startswith(f"{W}.env.DB: got a value with the control character {code} ")
    assert "(value not shown)" in problem
    assert "(tab is fine)" in problem


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param("a\tb", "a\tb", id="tab"),
        pytest.param("héllo ☃ 日本 😀", "héllo ☃ 日本 😀", id="unicode"),
        pytest.param("\u2028\u00a0", "\u2028\u00a0", id="unicode-separators"),
        pytest.param("", "", id="empty"),
        pytest.param("  padded  ", "  padded  ", id="spaces"),
        pytest.param('"quoted" \\ $HOME `id`', '"quoted" \\ $HOME `id`', id="shell-characters"),
        pytest.param(4, "4", id="int"),
        pytest.param(0.5, "0.5", id="float"),
        pytest.param(-1, "-1", id="negative"),
        pytest.param("x" * MAX_ENV_VALUE, "x" * MAX_ENV_VALUE, id="at-the-size-limit"),
    ],
)
def test_env_problems_accepts_and_gives_text(value, text):
    assert env_problems(W, {"DB": value}) == ({"DB": text}, [])


def test_env_problems_of_a_surrogate():
    clean, problems = env_problems(W, {"DB": f"{SECRET}\udc80"})

    assert clean == {}
    assert problems == [
        f"{W}.env.DB: got a value that is not valid Unicode text (value not shown), "
        "expected UTF-8 text"
    ]


@pytest.mark.parametrize(
    ("value", "size"),
    [
        pytest.param("x" * (MAX_ENV_VALUE + 1), MAX_ENV_VALUE + 1, id="one-byte-over"),
        # Counted in bytes: half as many two-byte characters and one more.
        pytest.param("é" * (MAX_ENV_VALUE // 2 + 1), MAX_ENV_VALUE + 2, id="bytes-not-chars"),
    ],
)
def test_env_problems_of_an_oversized_value(value, size):
    clean, problems = env_problems(W, {"DB": value})

    assert clean == {}
    assert problems == [
        f"{W}.env.DB: got a value of {size} bytes (value not shown), expected at most "
        f"{MAX_ENV_VALUE}; put large content in a file under shared/"
    ]


def test_env_problems_reports_every_problem_and_keeps_the_good_values():
    env = {
        "GOOD": "1",
        "1BAD": SECRET,
        "PATH": SECRET,
        "FLAG": True,
        "NL": f"{SECRET}\n",
        "BIG": SECRET * MAX_ENV_VALUE,
        "BAD_UTF": f"{SECRET}\ud800",
        "ALSO_GOOD": 2,
    }

    clean, problems = env_problems(W, env)

    assert clean == {"GOOD": "1", "ALSO_GOOD": "2"}
    assert [p.split(":")[0] for p in problems] == [
        f"{W}.env",
        f"{W}.env.PATH",
        f"{W}.env.FLAG",
        f"{W}.env.NL",
        f"{W}.env.BIG",
        f"{W}.env.BAD_UTF",
    ]
    # A value may be a secret: no message ever carries one.
    for problem in problems:
        assert SECRET not in problem


def test_env_problems_refuses_a_name_with_a_trailing_newline():
    clean, problems = env_problems(W, {"DEBUG\n": "1"})

    assert clean == {}
    assert len(problems) == 1


# =========================================================================== env file


def test_env_file_text_is_sorted_quoted_lines_under_a_header():
    text = env_file_text({"B_KEY": "two", "A_KEY": 'say "hi" \\ $HOME `id`', "C": ""})

    assert text == (
        "# flipback: environment of one release; written at staging, never changed.\n"
        'A_KEY="say \\"hi\\" \\\\ \\$HOME \\`id\\`"\n'
        'B_KEY="two"\n'
        'C=""\n'
    )


def test_env_file_text_of_no_env_is_the_header_only():
    text = env_file_text({})

    assert text == "# flipback: environment of one release; written at staging, never changed.\n"
    assert parse_env_file(text) == {}


@pytest.mark.parametrize(
    "value",
    [
        pytest.param('"', id="double-quote"),
        pytest.param('""', id="two-double-quotes"),
        pytest.param("'single'", id="single-quotes"),
        pytest.param("\\", id="backslash"),
        pytest.param("ends with \\", id="trailing-backslash"),
        pytest.param("\\\\", id="two-backslashes"),
        pytest.param('\\"', id="backslash-quote"),
        pytest.param("$HOME", id="dollar"),
        pytest.param("${HOME}", id="dollar-braces"),
        pytest.param("$$", id="two-dollars"),
        pytest.param("`id`", id="backtick"),
        pytest.param("$(id)", id="command-substitution"),
        pytest.param("\\t", id="backslash-t-literal"),
        pytest.param("\\n", id="backslash-n-literal"),
        pytest.param("a\tb\t", id="tab"),
        pytest.param("  leading and trailing  ", id="spaces"),
        pytest.param("", id="empty"),
        pytest.param("#", id="hash"),
        pytest.param("# not a comment", id="hash-first"),
        pytest.param("a=b=c", id="equals"),
        pytest.param("postgres://web:p%40ss@db:5432/web?ssl=1", id="url"),
        pytest.param("héllo ☃ 日本 😀", id="unicode"),
        pytest.param('{"json": [1, "two"]}', id="json"),
        pytest.param("semi;colon & pipe | star *", id="shell-operators"),
    ],
)
def test_env_file_round_trip(value):
    env = {"BEFORE": "x", "VALUE": value, "ZZ_AFTER": "y"}

    text = env_file_text(env)

    assert parse_env_file(text) == env
    # One line per value, under the header: nothing a value holds splits or ends a line.
    assert len(text.splitlines()) == 4


TRICKY = ['"', "\\", "`", "$", "'", " ", "\t", "#", "=", "n", "t", "é"]


def test_env_file_round_trip_of_every_short_mix_of_tricky_characters():
    values = [
        "".join(chars) for size in range(4) for chars in itertools.product(TRICKY, repeat=size)
    ]
    env = {f"V{index}": value for index, value in enumerate(values)}

    text = env_file_text(env)

    assert len(env) == sum(len(TRICKY) ** n for n in range(4))
    assert parse_env_file(text) == env
    assert len(text.splitlines()) == len(env) + 1
    for value in values:
        assert parse_env_file(env_file_text({"ONE": value})) == {"ONE": value}


@pytest.mark.parametrize(
    ("text", "values"),
    [
        pytest.param("", {}, id="empty"),
        pytest.param("# a comment\n\n", {}, id="comment-and-blank"),
        pytest.param("NO_EQUALS\n", {}, id="no-equals"),
        pytest.param("A=unquoted\n", {}, id="unquoted"),
        pytest.param("A='single'\n", {}, id="single-quoted"),
        pytest.param('A="\n', {}, id="lone-quote"),
        pytest.param('A="open\n', {}, id="unclosed"),
        pytest.param('A="x"\nB="y"', {"A": "x", "B": "y"}, id="no-final-newline"),
        pytest.param('A="1"\nA="2"\n', {"A": "2"}, id="last-wins"),
        pytest.param('A="\\n\\t\\x"\n', {"A": "\\n\\t\\x"}, id="other-escapes-kept"),
        pytest.param('A="\\"\\\\\\`\\$"\n', {"A": '"\\`$'}, id="escapes-taken"),
        pytest.param('A="a=b"\n', {"A": "a=b"}, id="equals-in-value"),
    ],
)
def test_parse_env_file_reads_only_what_env_file_text_writes(text, values):
    assert parse_env_file(text) == values


# =========================================================================== env_digest


def test_env_digest_is_a_slow_salted_hex_digest():
    env = {"A": "1", "B": SECRET}
    canonical = '{"A":"1","B":"' + SECRET + '"}'
    expected = hashlib.pbkdf2_hmac(
        "sha256", canonical.encode(), b"flipback-env:shop", ENV_DIGEST_ROUNDS
    ).hex()

    assert env_digest(SERVICE, env) == expected
    assert ENV_DIGEST_ROUNDS >= 10_000
    assert re.fullmatch(r"[0-9a-f]{64}", expected)


@pytest.mark.parametrize(
    ("first", "second", "equal"),
    [
        pytest.param(
            ("shop", {"A": "1", "B": "2"}),
            ("shop", {"B": "2", "A": "1"}),
            True,
            id="order-does-not-matter",
        ),
        pytest.param(("shop", {}), ("shop", {}), True, id="empty"),
        pytest.param(("shop", {"A": "1"}), ("shop", {"A": "2"}), False, id="value"),
        pytest.param(("shop", {"A": "1"}), ("shop", {"B": "1"}), False, id="name"),
        pytest.param(("shop", {"A": "1"}), ("shop", {"A": "1", "B": ""}), False, id="added"),
        pytest.param(("shop", {"A": ""}), ("shop", {}), False, id="empty-value-counts"),
        pytest.param(("shop", {"A": "1"}), ("web", {"A": "1"}), False, id="salted-by-service"),
        pytest.param(("shop", {"A": "é"}), ("shop", {"A": "e"}), False, id="unicode"),
    ],
)
def test_env_digest_equality(first, second, equal):
    assert (env_digest(*first) == env_digest(*second)) is equal


# =========================================================================== app, unit


@pytest.mark.parametrize(
    ("app", "factory", "expected"),
    [
        pytest.param("app:app", False, ("app:app", False), id="attribute"),
        pytest.param("app:app", True, ("app:app", True), id="factory-flag"),
        pytest.param("app:create()", False, ("app:create", True), id="factory-form"),
        pytest.param("app:create()", True, ("app:create", True), id="factory-form-and-flag"),
        pytest.param("pkg.main:make_app()", False, ("pkg.main:make_app", True), id="dotted"),
        pytest.param("app:app", 1, ("app:app", True), id="truthy-flag-is-a-bool"),
    ],
)
def test_app_and_factory(app, factory, expected):
    result = app_and_factory(app, factory)
    assert result == expected
    assert type(result[1]) is bool


def test_unit_and_env_paths():
    assert unit_path(SERVICE, BUILD_ID) == f"{UNIT_DIR}/shop@{BUILD_ID}.service"
    assert UNIT_DIR == "/etc/systemd/system"
    assert env_path(HOME, BUILD_ID) == f"{HOME}/releases/{BUILD_ID}/.flipback/env"


def test_site_path_is_the_service_s_conf_in_the_site_dir():
    assert SITE_DIR == "/etc/nginx/conf.d"
    assert site_path(SERVICE) == "/etc/nginx/conf.d/flipback-shop.conf"
    assert site_path("web", "/tmp/sites") == "/tmp/sites/flipback-web.conf"


def site_lines(text: str) -> list[str]:
    """The directives of a site: comments and blank lines left out, indentation stripped."""
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_site_text_listens_on_the_port_and_proxies_through_current():
    text = site_text(service=SERVICE, home=HOME, port=8000)

    assert site_lines(text) == [
        "map $http_upgrade $flipback_shop_connection {",
        "default upgrade;",
        '"" close;',
        "}",
        "server {",
        "listen 8000;",
        "listen [::]:8000;",
        "client_max_body_size 1m;",
        "location / {",
        "proxy_pass http://unix:/srv/shop/current/sock:;",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $flipback_shop_connection;",
        "proxy_set_header Host $host;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_read_timeout 60s;",
        "proxy_send_timeout 60s;",
        "}",
        "include /etc/nginx/flipback/shop/*.conf;",
        "}",
    ]
    assert "ssl" not in text
    assert text.startswith(f"# flipback: public port of {SERVICE}")
    assert text.endswith("}\n")
    # Through the `current` link, never a release's own path: the flip moves traffic.
    assert not RELEASE_ID_RE.search(text)
    assert "/releases/" not in text


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        pytest.param({"port": 8443}, "listen 8443;", id="port-v4"),
        pytest.param({"port": 8443}, "listen [::]:8443;", id="port-v6"),
        pytest.param(
            {"home": "/opt/shop"}, "proxy_pass http://unix:/opt/shop/current/sock:;", id="home"
        ),
        pytest.param({"service": "web"}, "public port of web,", id="service"),
    ],
)
def test_site_text_follows_each_setting(changes, line):
    values: dict[str, Any] = {"service": SERVICE, "home": HOME, "port": 8000, **changes}

    assert line in site_text(**values)
    assert line not in site_text(service=SERVICE, home=HOME, port=8000)


TLS = {"certificate": "/etc/ssl/certs/shop.pem", "key": "/etc/ssl/private/shop.key"}


def test_site_text_with_tls_listens_with_ssl_and_its_files():
    lines = site_lines(site_text(service=SERVICE, home=HOME, port=8443, nginx={"tls": TLS}))

    assert lines[5:11] == [
        "listen 8443 ssl;",
        "listen [::]:8443 ssl;",
        "ssl_certificate /etc/ssl/certs/shop.pem;",
        "ssl_certificate_key /etc/ssl/private/shop.key;",
        "ssl_protocols TLSv1.2 TLSv1.3;",
        "client_max_body_size 1m;",
    ]
    # The app learns the request came over HTTPS, uvicorn its client, from nginx.
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in lines
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in lines


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param({"nginx": {"tls": TLS}}, True, id="tls"),
        pytest.param({"nginx": {"tls": {}}}, False, id="empty"),
        pytest.param({"nginx": {"server_name": ["a.test"]}}, False, id="no-tls-key"),
        pytest.param({}, False, id="no-nginx"),
        pytest.param(None, False, id="no-config"),
    ],
)
def test_public_tls(config, expected):
    assert public_tls(config) is expected


def test_site_text_is_the_same_for_the_same_release_config():
    # The switch and prepare compare the installed site with it byte for byte.
    first = site_text(service=SERVICE, home=HOME, port=8000)
    assert first == site_text(service=SERVICE, home=HOME, port=8000)
    assert first != site_text(service=SERVICE, home=HOME, port=8001)


def unit(**changes: Any) -> str:
    values: dict[str, Any] = {
        "service": SERVICE,
        "home": HOME,
        "user": "shopuser",
        "app": "pkg.main:app",
        "factory": False,
        "workers": 3,
    }
    values.update(changes)
    return unit_text(**values)


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_unit_text_runs_the_release_as_configured():
    found = directives(unit())

    assert found["User"] == ["shopuser"]
    assert found["Group"] == ["shopuser"]
    assert found["Description"] == ["flipback shop release %i"]
    assert found["WorkingDirectory"] == ["/srv/shop/releases/%i"]
    assert found["AssertPathExists"] == ["/srv/shop/releases/%i/manifest.json"]
    assert found["EnvironmentFile"] == ["/srv/shop/releases/%i/.flipback/env"]
    assert found["Environment"] == ["FLIPBACK_RELEASE=%i PYTHONDONTWRITEBYTECODE=1"]
    assert found["RuntimeDirectory"] == ["flipback-shop/%i"]
    assert found["ReadWritePaths"] == ["/srv/shop/shared"]
    assert found["ExecStart"] == [
        "/srv/shop/releases/%i/venv/bin/python -m uvicorn pkg.main:app "
        "--uds /run/flipback-shop/%i/app.sock --workers 3 --no-access-log "
        "--proxy-headers --forwarded-allow-ips '*' "
        "--timeout-graceful-shutdown 20 --header X-Flipback-Release:%i"
    ]
    assert found["WantedBy"] == ["multi-user.target"]


def test_unit_text_of_a_factory():
    [exec_start] = directives(unit(app="pkg.main:create", factory=True))["ExecStart"]

    assert " -m uvicorn pkg.main:create --factory --uds " in exec_start
    assert "--factory" not in unit()


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        pytest.param({"workers": 1}, "--workers 1 ", id="workers"),
        pytest.param({"user": "other"}, "User=other\n", id="user"),
        pytest.param({"home": "/opt/shop"}, "EnvironmentFile=/opt/shop/releases/%i/", id="home"),
        pytest.param({"service": "web"}, "RuntimeDirectory=flipback-web/%i\n", id="service"),
    ],
)
def test_unit_text_follows_each_setting(changes, line):
    assert line in unit(**changes)
    assert line not in unit()


def test_unit_text_bakes_in_no_release_id():
    text = unit()

    # The release is the instance (%i): one unit text serves whichever id it is named for.
    assert not RELEASE_ID_RE.search(text)
    assert text.count("%i") >= 6
    assert text.endswith("\n")


# =========================================================================== config, id


def config(**changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "service": SERVICE,
        "home": HOME,
        "user": "shopuser",
        "app": "app:app",
        "factory": False,
        "workers": 2,
        "port": 8000,
        "env": {"A": "1", "B": SECRET},
    }
    values.update(changes)
    return run_config(**values)


def test_run_config_records_names_and_a_digest_never_values():
    recorded = config()

    assert recorded == {
        "app": "app:app",
        "factory": False,
        "workers": 2,
        "port": 8000,
        "user": "shopuser",
        "env_names": ["A", "B"],
        "env_digest": env_digest(SERVICE, {"A": "1", "B": SECRET}),
        "unit_sha256": sha256_text(
            unit_text(
                service=SERVICE, home=HOME, user="shopuser", app="app:app", factory=False, workers=2
            )
        ),
        "release_header": True,
        "access_log": False,
        "nginx": NGINX_DEFAULTS,
        "commands": {},
    }
    assert SECRET not in repr(recorded)


def test_run_config_normalizes_a_factory_app_and_workers():
    recorded = config(app="app:create()", workers="4", port="8001")

    assert (recorded["app"], recorded["factory"], recorded["workers"]) == ("app:create", True, 4)
    assert recorded["port"] == 8001
    assert recorded == config(app="app:create", factory=True, workers=4, port=8001)


def test_config_digest_covers_only_what_runs_the_release():
    base = config()

    assert config_digest(base) == config_digest(dict(reversed(list(base.items()))))
    assert config_digest(base) == config_digest({**base, "note": "not part of it"})
    for key in base:
        assert config_digest(base) != config_digest({**base, key: "changed"}), key
    # The port is part of it: the site a release is served through is its own.
    assert "port" in base
    assert config_digest(base) != config_digest({**base, "port": 8001})


@pytest.mark.parametrize(
    ("changes", "same"),
    [
        pytest.param({}, True, id="same-inputs"),
        pytest.param({"env": {"B": SECRET, "A": "1"}}, True, id="env-in-another-order"),
        pytest.param({"env": {"A": "1", "B": "other"}}, False, id="env-value"),
        pytest.param({"env": {"A": "1"}}, False, id="env-removed"),
        pytest.param({"workers": 3}, False, id="workers"),
        pytest.param({"port": 8001}, False, id="port"),
        pytest.param({"port": "8000"}, True, id="port-as-text"),
        pytest.param({"user": "other"}, False, id="user"),
        pytest.param({"app": "app:other"}, False, id="app"),
        pytest.param({"factory": True}, False, id="factory"),
        pytest.param({"home": "/opt/shop"}, False, id="home"),
    ],
)
def test_release_id_for_follows_the_configuration(changes, same):
    first = release_id_for(BUILD_ID, config())
    second = release_id_for(BUILD_ID, config(**changes))

    assert (first == second) is same
    for release_id in (first, second):
        assert RELEASE_ID_RE.fullmatch(release_id)
        # The build's commit time stays first: ids still sort by it.
        assert release_id.startswith("20261129T141500-")


def test_release_id_for_follows_the_build():
    ours, theirs = release_id_for(BUILD_ID, config()), release_id_for(OTHER_BUILD_ID, config())

    assert ours != theirs
    assert theirs.startswith("20261130T090000-")
    assert ours != BUILD_ID


@pytest.mark.parametrize(
    "build_id",
    [
        pytest.param("", id="empty"),
        pytest.param(None, id="none"),
        pytest.param("latest", id="word"),
        pytest.param("20261129T141500-3F2A9C1D0E", id="uppercase-hex"),
        pytest.param("20261129T141500-3f2a9c1d0", id="short-hash"),
        pytest.param("20261129-141500-3f2a9c1d0e", id="no-T"),
        pytest.param("x20261129T141500-3f2a9c1d0e", id="prefix"),
    ],
)
def test_release_id_for_refuses_what_is_no_build_id(build_id):
    with pytest.raises(ValueError) as failed:
        release_id_for(build_id, config())

    assert str(failed.value) == f"build id {build_id!r} is not like 20261129T141500-3f2a9c1d0e"


# =========================================================================== config_changes


def recorded(**changes: Any) -> dict[str, Any]:
    """A config as the manifest records it, digest and unit hash stand-ins included."""
    values: dict[str, Any] = {
        "app": "app:app",
        "factory": False,
        "workers": 1,
        "port": 8000,
        "user": "shop",
        "env_names": ["KEEP", "SAME"],
        "env_digest": "d1",
        "unit_sha256": "u1",
    }
    values.update(changes)
    return values


ENV = {"KEEP": "k", "SAME": "s"}


@pytest.mark.parametrize(
    ("before", "before_env", "after", "after_env", "changes"),
    [
        pytest.param(None, None, recorded(), ENV, [], id="nothing-before"),
        pytest.param(recorded(), ENV, recorded(), ENV, [], id="unchanged"),
        pytest.param(
            recorded(),
            ENV,
            recorded(app="app:make", factory=True),
            ENV,
            ["app app:app -> app:make", "factory False -> True"],
            id="app-and-factory",
        ),
        pytest.param(recorded(), ENV, recorded(workers=2), ENV, ["workers 1 -> 2"], id="workers"),
        pytest.param(recorded(), ENV, recorded(port=8001), ENV, ["port 8000 -> 8001"], id="port"),
        pytest.param(
            recorded(),
            ENV,
            recorded(port=8001, unit_sha256="u2"),
            ENV,
            ["port 8000 -> 8001"],
            id="port-with-the-unit",
        ),
        pytest.param(
            recorded(),
            ENV,
            recorded(workers=2, port=9000, user="other"),
            ENV,
            ["workers 1 -> 2", "port 8000 -> 9000", "user shop -> other"],
            id="port-between-workers-and-user",
        ),
        pytest.param(
            {k: v for k, v in recorded().items() if k != "port"},
            ENV,
            recorded(),
            ENV,
            ["port None -> 8000"],
            id="port-not-recorded-before",
        ),
        pytest.param(
            recorded(), ENV, recorded(user="other"), ENV, ["user shop -> other"], id="user"
        ),
        pytest.param(
            recorded(),
            ENV,
            recorded(env_digest="d2"),
            {**ENV, "KEEP": "changed"},
            ["KEEP"],
            id="value-changed",
        ),
        pytest.param(
            recorded(),
            ENV,
            recorded(env_names=["KEEP", "NEW", "SAME"], env_digest="d2"),
            {**ENV, "NEW": "n"},
            ["+NEW"],
            id="added",
        ),
        pytest.param(
            recorded(),
            ENV,
            recorded(env_names=["SAME"], env_digest="d2"),
            {"SAME": "s"},
            ["-KEEP"],
            id="removed",
        ),
        pytest.param(
            recorded(env_names=["A_OLD", "KEEP", "Z"]),
            {"A_OLD": "o", "KEEP": "k", "Z": "z"},
            recorded(workers=4, env_names=["B_NEW", "KEEP", "Z"], env_digest="d2"),
            {"B_NEW": "n", "KEEP": "k", "Z": "z2"},
            ["workers 1 -> 4", "-A_OLD", "+B_NEW", "Z"],
            id="settings-then-names-in-order",
        ),
        pytest.param(
            recorded(),
            None,
            recorded(env_names=["KEEP", "NEW", "SAME"], env_digest="d2"),
            {**ENV, "NEW": "n"},
            ["+NEW", "env values (which ones is not known)"],
            id="values-before-unknown",
        ),
        pytest.param(recorded(), None, recorded(), ENV, [], id="values-before-unknown-same-digest"),
        pytest.param(
            recorded(),
            ENV,
            recorded(unit_sha256="u2"),
            ENV,
            ["unit (flipback's service settings)"],
            id="unit-only",
        ),
        pytest.param(
            recorded(),
            ENV,
            recorded(workers=2, unit_sha256="u2"),
            ENV,
            ["workers 1 -> 2"],
            id="unit-with-a-setting",
        ),
    ],
)
def test_config_changes(before, before_env, after, after_env, changes):
    assert config_changes(before, before_env, after, after_env) == changes


def test_config_changes_never_show_values():
    changes = config_changes(
        recorded(env_names=["A", "B"]),
        {"A": SECRET, "B": "old"},
        recorded(env_names=["A", "B"], env_digest="d2"),
        {"A": "new", "B": SECRET},
    )

    assert changes == ["A", "B"]


def test_masked_config_shows_no_values():
    text = masked_config(
        recorded(app="app:make", factory=True, env_names=["A", "B"]), {"A": "*** (changed)"}
    )

    assert text == (
        "app: app:make (factory)\nworkers: 1\nport: 8000\nuser: shop\n"
        "env A=*** (changed)\nenv B=***\n"
    )
    assert masked_config(recorded(env_names=[]), {}) == (
        "app: app:app\nworkers: 1\nport: 8000\nuser: shop\n"
    )
    assert "port: 8443\n" in masked_config(recorded(port=8443), {})


# =========================================================================== resolve_release


def resolve(**changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "service": SERVICE,
        "user": "shopuser",
        "app": "app:app",
        "factory": False,
        "workers": 2,
        "port": 8000,
        "env": {"A": "1", "B": SECRET},
        "build_id": BUILD_ID,
        "home": HOME,
    }
    values.update(changes)
    return resolve_release(**values)


def test_resolve_release_gives_the_id_and_the_config():
    result = resolve()

    assert result == {
        "release": release_id_for(BUILD_ID, config()),
        "config": config(),
        "build_id": BUILD_ID,
    }
    assert SECRET not in repr(result)


def test_resolve_params_root_is_the_parent_of_the_service_home():
    params = {
        "service": {"name": SERVICE, "app": "app:app", "port": 8000},
        "env": {},
        "build_id": BUILD_ID,
    }
    default, srv, opt = (resolve_params({**params, "root": r}) for r in ("", "/srv/", "/opt"))

    assert default == srv
    # The home is in the unit, which the config records by its digest.
    for result, home in ((default, "/srv/shop"), (opt, "/opt/shop")):
        unit = unit_text(
            service=SERVICE, home=home, user=SERVICE, app="app:app", factory=False, workers=1
        )
        assert result["config"]["unit_sha256"] == sha256_text(unit)
    assert opt["release"] != default["release"]


@pytest.mark.parametrize(
    ("changes", "starts"),
    [
        pytest.param({"app": "app"}, f"{W}.app: got 'app', expected ", id="app-no-attribute"),
        pytest.param({"app": "my-app:app"}, f"{W}.app: got 'my-app:app'", id="app-dash"),
        pytest.param({"app": None}, f"{W}.app: got None", id="app-missing"),
        pytest.param({"app": 5}, f"{W}.app: got 5", id="app-not-a-string"),
        pytest.param(
            {"build_id": "latest"},
            "build_id: got 'latest', expected a build id of release_build",
            id="build-id",
        ),
        pytest.param({"build_id": ""}, "build_id: got ''", id="build-id-empty"),
        pytest.param({"env": {"PATH": SECRET}}, f"{W}.env.PATH: got a reserved", id="env-name"),
        pytest.param(
            {"env": {"A": f"{SECRET}\n"}}, f"{W}.env.A: got a value with the", id="env-value"
        ),
        pytest.param({"env": [SECRET]}, f"{W}.env: got a list", id="env-not-a-mapping"),
        pytest.param({"port": 0}, f"{W}.port: got 0, expected an integer 1-65535", id="port-0"),
        pytest.param(
            {"port": 65536}, f"{W}.port: got 65536, expected an integer 1-65535", id="port-65536"
        ),
        pytest.param(
            {"port": 70000}, f"{W}.port: got 70000, expected an integer 1-65535", id="port-70000"
        ),
        pytest.param({"port": -1}, f"{W}.port: got -1, expected ", id="port-negative"),
        pytest.param(
            {"port": "8000"}, f"{W}.port: got '8000', expected an integer", id="port-as-text"
        ),
        pytest.param({"port": True}, f"{W}.port: got True, expected an integer", id="port-bool"),
        pytest.param({"port": None}, f"{W}.port: got None, expected an integer", id="port-none"),
        pytest.param({"port": 8000.0}, f"{W}.port: got 8000.0, expected ", id="port-float"),
    ],
)
def test_resolve_release_refuses_a_configuration_that_cannot_run(changes, starts):
    with pytest.raises(ConfigInvalid) as failed:
        resolve(**changes)

    error = failed.value
    assert isinstance(error, FlipbackError)
    assert error.retryable is False
    [problem] = error.details["problems"]
    assert problem.startswith(starts)
    assert error.msg.startswith("invalid configuration (1 problem), nothing was changed on any ")
    assert error.msg.endswith(f"fails the same way): {problem}")
    assert SECRET not in error.msg


def test_resolve_release_names_every_problem_at_once():
    with pytest.raises(ConfigInvalid) as failed:
        resolve(app="app", build_id="x", port=0, env={"LD_PRELOAD": SECRET, "OK": "1", "1X": "y"})

    problems = failed.value.details["problems"]
    assert [p.split(":")[0] for p in problems] == [
        f"{W}.env.LD_PRELOAD",
        f"{W}.env",
        f"{W}.app",
        "build_id",
        f"{W}.port",
    ]
    assert failed.value.msg.startswith("invalid configuration (5 problems)")
    assert SECRET not in failed.value.msg


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"app": "app:app\n"}, id="app"),
        pytest.param({"build_id": f"{BUILD_ID}\n"}, id="build-id"),
    ],
)
def test_resolve_release_refuses_a_trailing_newline(changes):
    with pytest.raises(ConfigInvalid):
        resolve(**changes)


@pytest.mark.parametrize("port", [1, 8000, 65535])
def test_resolve_release_takes_every_port_from_1_to_65535(port):
    assert resolve(port=port)["config"]["port"] == port


def test_resolve_params_of_a_checked_service_definition():
    params = {
        "service": {
            "name": SERVICE,
            "user": "shopuser",
            "app": "app:app",
            "workers": 2,
            "port": 8000,
        },
        "env": {"A": "1", "B": SECRET},
        "build_id": BUILD_ID,
        "root": "/srv",
    }

    assert resolve_params(params) == {"service": SERVICE, **resolve()}


def test_resolve_params_defaults():
    params = {
        "service": {"name": SERVICE, "app": "app:make()", "port": 8000},
        "env": {},
        "build_id": BUILD_ID,
    }

    result = resolve_params({**params, "root": ""})

    assert result["service"] == SERVICE
    assert result["config"] == run_config(
        service=SERVICE,
        home="/srv/shop",
        user=SERVICE,
        app="app:make",
        factory=True,
        workers=1,
        port=8000,
        env={},
    )


def test_resolve_params_without_a_port_is_refused():
    # service_config makes the port required; a definition without one is not guessed.
    params = {"service": {"name": SERVICE, "app": "app:app"}, "env": {}, "build_id": BUILD_ID}

    with pytest.raises(ConfigInvalid) as failed:
        resolve_params({**params, "root": ""})

    assert failed.value.details["problems"] == [f"{W}.port: got 0, expected an integer 1-65535"]


def test_config_argument_spec_hides_the_env():
    assert CONFIG_ARGUMENT_SPEC["env"]["no_log"] is True
    assert {k for k, v in CONFIG_ARGUMENT_SPEC.items() if v.get("required")} == {
        "service",
        "build_id",
    }


# =========================================================================== staged_files


@pytest.fixture
def staged() -> Release:
    return a_release(SERVICE, HOME, env={"A": "1", "B": SECRET}, user="shopuser", workers=2)


def files_of(staged: Release, /, **changes: Any) -> tuple[str, str]:
    values: dict[str, Any] = {
        "service": SERVICE,
        "home": HOME,
        "release": staged.id,
        "build_id": staged.build_id,
        "config": staged.config,
        "env_text": staged.env_text,
    }
    values.update(changes)
    return staged_files(**values)


def test_a_release_from_the_shared_helper_is_what_release_config_returns(staged):
    resolved = resolve_params(
        {
            "service": {
                "name": SERVICE,
                "user": "shopuser",
                "app": "app:app",
                "workers": 2,
                "port": 8000,
            },
            "env": {"A": "1", "B": SECRET},
            "build_id": BUILD_ID,
            "root": "/srv",
        }
    )

    assert staged.config["port"] == 8000
    assert (staged.id, staged.config, staged.build_id) == (
        resolved["release"],
        resolved["config"],
        resolved["build_id"],
    )
    assert parse_env_file(staged.env_text) == {"A": "1", "B": SECRET}


def test_staged_files_of_a_release_as_worked_out(staged):
    units, env_file = files_of(staged)

    # One unit, the web instance's: the release has no processes.
    (unit_file,) = units.values()
    assert list(units) == [f"{SERVICE}@{staged.id}.service"]
    assert unit_file == unit_text(
        service=SERVICE, home=HOME, user="shopuser", app="app:app", factory=False, workers=2
    )
    assert sha256_text(unit_file) == staged.config["unit_sha256"]
    assert env_file == staged.env_text


MISMATCH = "release: got "


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        pytest.param(
            lambda r: {"env_text": r.env_text.replace(SECRET, "tampered")},
            MISMATCH,
            id="env-value-tampered",
        ),
        pytest.param(
            lambda r: {"env_text": r.env_text + 'C="added"\n'}, MISMATCH, id="env-value-added"
        ),
        pytest.param(
            lambda r: {"release": "20261129T141500-0000000000"}, MISMATCH, id="other-release-id"
        ),
        pytest.param(lambda r: {"build_id": OTHER_BUILD_ID}, MISMATCH, id="other-build"),
        pytest.param(lambda r: {"home": "/opt/shop"}, MISMATCH, id="other-root"),
        pytest.param(
            lambda r: {"config": {**r.config, "workers": 3}}, MISMATCH, id="config-workers"
        ),
        pytest.param(
            lambda r: {"config": {**r.config, "user": "root"}}, MISMATCH, id="config-user"
        ),
        pytest.param(lambda r: {"config": {**r.config, "port": 8001}}, MISMATCH, id="config-port"),
        pytest.param(
            lambda r: {"config": {**r.config, "port": "8000"}}, MISMATCH, id="config-port-as-text"
        ),
        # The release id is the same for these: the recorded config itself is refused.
        pytest.param(
            lambda r: {"config": {**r.config, "env_digest": "0" * 64}},
            MISMATCH,
            id="config-digest-tampered",
        ),
        pytest.param(
            lambda r: {"config": {**r.config, "env_names": ["A"]}},
            MISMATCH,
            id="config-names-tampered",
        ),
        pytest.param(
            lambda r: {"config": {**r.config, "note": "extra"}}, MISMATCH, id="config-extra-key"
        ),
        pytest.param(
            lambda r: {"config": {k: v for k, v in r.config.items() if k != "port"}},
            f"{W}.port: got 0, expected an integer 1-65535",
            id="config-without-port",
        ),
        pytest.param(
            lambda r: {"env_text": r.env_text.split("\n", 1)[1]},
            "env_file: got text that is not an env file written by flipback_env_file",
            id="env-without-header",
        ),
        pytest.param(
            lambda r: {"env_text": r.env_text + "\n"},
            "env_file: got text that is not an env file",
            id="env-extra-blank-line",
        ),
        pytest.param(
            lambda r: {"env_text": r.env_text + "# a comment\n"},
            "env_file: got text that is not an env file",
            id="env-extra-comment",
        ),
        pytest.param(
            lambda r: {"env_text": r.env_text + "C=unquoted\n"},
            "env_file: got text that is not an env file",
            id="env-unquoted-line",
        ),
        pytest.param(
            lambda r: {"env_text": r.env_text.replace('A="1"\nB=', "B=") + 'A="1"\n'},
            "env_file: got text that is not an env file",
            id="env-not-sorted",
        ),
        pytest.param(
            lambda r: {"env_text": r.env_text + 'PATH="/tmp"\n'},
            f"{W}.env.PATH: got a reserved name",
            id="env-reserved-name",
        ),
    ],
)
def test_staged_files_refuses_what_the_release_id_does_not_stand_for(staged, changes, says):
    with pytest.raises(ConfigInvalid) as failed:
        files_of(staged, **changes(staged))

    error = failed.value
    assert error.retryable is False
    [problem] = error.details["problems"]
    assert problem.startswith(says)
    if says == MISMATCH:
        assert "the configuration changed since the release id was worked out" in problem
    assert SECRET not in error.msg


def test_site_text_of_a_service_with_its_own_nginx_options():
    text = site_text(
        service="my-shop",
        home="/srv/my-shop",
        port=8000,
        nginx={
            "server_name": ["shop.example.com", "*.shop.example.com"],
            "read_timeout": 3600,
            "max_body": "20m",
            "static": {"/static/": "static", "/media/": "var/media/"},
        },
    )
    lines = site_lines(text)

    assert "map $http_upgrade $flipback_my_shop_connection {" in lines
    assert "server_name shop.example.com *.shop.example.com;" in lines
    assert "client_max_body_size 20m;" in lines
    assert tuple(line for line in lines if line.startswith(("proxy_read", "proxy_send"))) == (
        "proxy_read_timeout 3600s;",
        "proxy_send_timeout 3600s;",
    )
    # Static files: the release's own, through `current` (they switch with it).
    static = lines.index("location ^~ /static/ {")
    assert lines[static + 1] == "alias /srv/my-shop/current/static/;"
    media = lines.index("location ^~ /media/ {")
    assert lines[media + 1] == "alias /srv/my-shop/current/var/media/;"
    assert lines[-2:] == ["include /etc/nginx/flipback/my-shop/*.conf;", "}"]


def test_a_site_of_a_release_staged_before_the_nginx_options_gets_the_defaults():
    assert site_text(service=SERVICE, home=HOME, port=8000) == site_text(
        service=SERVICE, home=HOME, port=8000, nginx=NGINX_DEFAULTS
    )


@pytest.mark.parametrize(("access_log", "flag"), [(False, True), (True, False)])
def test_access_log_drops_the_no_access_log_flag(access_log, flag):
    unit = unit_text(
        service=SERVICE,
        home=HOME,
        user="shop",
        app="app:app",
        factory=False,
        workers=1,
        access_log=access_log,
    )
    assert ("--no-access-log" in unit) is flag


def test_nginx_options_and_access_log_are_part_of_the_release():
    base = dict(service=SERVICE, home=HOME, user="shop", app="app:app", factory=False)
    plain = run_config(**base, workers=1, port=8000, env={})
    logged = run_config(**base, workers=1, port=8000, env={}, access_log=True)
    bigger = run_config(**base, workers=1, port=8000, env={}, nginx={"max_body": "5m"})
    digests = {config_digest(c) for c in (plain, logged, bigger)}
    assert len(digests) == 3
    assert bigger["nginx"] == {**NGINX_DEFAULTS, "max_body": "5m"}


def test_staged_files_of_a_release_with_every_setting_of_its_own():
    # What the controller worked out from a definition with nginx settings, an access
    # log and commands is what the host finds the release id stands for.
    resolved = resolve_release(
        service=SERVICE,
        user="shopuser",
        app="app:app",
        factory=False,
        workers=2,
        port=8000,
        env={"A": "1"},
        build_id=BUILD_ID,
        home=HOME,
        nginx={**NGINX_DEFAULTS, "max_body": "20m", "server_name": ["shop.example"]},
        access_log=True,
        commands={"before_switch_once": [{"run": "migrate", "timeout": 60}]},
    )
    units, _env = staged_files(
        service=SERVICE,
        home=HOME,
        release=resolved["release"],
        build_id=BUILD_ID,
        config=resolved["config"],
        env_text=env_file_text({"A": "1"}),
    )
    unit_file = units[f"{SERVICE}@{resolved['release']}.service"]
    assert "--no-access-log" not in unit_file
    assert sha256_text(unit_file) == resolved["config"]["unit_sha256"]
    # A release id from the same build without them is another release.
    plain = a_release(SERVICE, HOME, env={"A": "1"}, user="shopuser", workers=2)
    assert plain.id != resolved["release"]


def test_static_dirs_are_each_directory_once_without_a_trailing_slash():
    config = {"nginx": {"static": {"/a/": "static/", "/b/": "static", "/c/": "var/media"}}}
    assert static_dirs(config) == ["static", "var/media"]
    assert static_dirs({}) == []


# =========================================================================== processes


def test_processes_are_checked_naming_field_value_and_what_was_expected():
    problems: list[str] = []
    clean = normalize_processes(
        W,
        {
            "worker": "celery -A proj worker",
            "Worker": "x",
            "a.b": "x",
            "beat": "",
            "multi": "one\ntwo",
            "num": 3,
        },
        problems,
    )
    assert clean == {"worker": "celery -A proj worker"}
    text = "\n".join(problems)
    assert f"{W}.processes: got the name 'Worker', expected a lowercase name" in text
    assert "got the name 'a.b'" in text
    assert f"{W}.processes.beat: got '', expected a non-empty command line" in text
    assert f"{W}.processes.multi: got 'one\\ntwo'" in text
    assert f"{W}.processes.num: got 3" in text
    problems = []
    assert normalize_processes(W, ["celery"], problems) == {}
    assert problems == [
        f"{W}.processes: got ['celery'], expected a mapping of process names to command "
        'lines, e.g. {worker: "celery -A proj worker"}'
    ]


def test_bad_processes_are_refused_by_resolve_release_as_on_the_controller():
    with pytest.raises(ConfigInvalid) as refused:
        resolve_release(
            service=SERVICE,
            user="shop",
            app="app:app",
            factory=False,
            workers=1,
            port=8000,
            env={},
            build_id=BUILD_ID,
            home=HOME,
            processes={"Bad Name": "x"},
            process_start_seconds=-1,
        )
    assert "got the name 'Bad Name'" in refused.value.msg
    assert f"{W}.process_start_seconds: got -1, expected seconds, 0-300" in refused.value.msg
    assert "nothing was changed on any host" in refused.value.msg


def test_a_release_without_processes_keeps_the_id_it_had():
    # Releases staged before processes existed must keep their id: the configuration
    # records the processes only when there are some.
    plain = a_release(SERVICE, HOME)
    assert "processes" not in plain.config
    assert "process_start_seconds" not in plain.config
    with_worker = a_release(SERVICE, HOME, processes={"worker": "w"})
    assert with_worker.config["processes"] == {"worker": "w"}
    assert with_worker.id != plain.id
    slower = a_release(SERVICE, HOME, processes={"worker": "w"}, process_start_seconds=10)
    assert slower.id != with_worker.id


def test_a_process_unit_runs_the_command_as_written_in_the_release():
    command = 'celery -A "proj" worker --name=w%h $HOME \\ `x`'
    text = process_unit_text(
        service=SERVICE, home=HOME, user="shop", process="worker", command=command
    )
    (exec_start,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    # One argument for /bin/sh, with systemd's $ and % expansions and quotes escaped.
    assert exec_start == (
        'ExecStart=/bin/sh -c "exec celery -A \\"proj\\" worker --name=w%%h $$HOME \\\\ `x`"'
    )
    assert f'Environment="PATH={HOME}/releases/%i/venv/bin:' in text
    assert f"EnvironmentFile={HOME}/releases/%i/.flipback/env" in text
    assert "User=shop" in text and f"WorkingDirectory={HOME}/releases/%i" in text
    assert f"ReadWritePaths={HOME}/shared" in text and "ProtectSystem=strict" in text
    # No socket: only the web instance has one.
    assert "RuntimeDirectory" not in text and "--uds" not in text


def test_staged_files_of_a_release_with_processes_has_a_unit_for_each():
    staged = a_release(SERVICE, HOME, user="shopuser", processes={"worker": "w", "beat": "b"})
    units, _env = files_of(staged)
    assert sorted(units) == sorted(
        [
            f"{SERVICE}@{staged.id}.service",
            f"{SERVICE}.beat@{staged.id}.service",
            f"{SERVICE}.worker@{staged.id}.service",
        ]
    )
    assert 'ExecStart=/bin/sh -c "exec w"' in units[f"{SERVICE}.worker@{staged.id}.service"]
    # A process changed after the id was worked out is refused on the host.
    tampered = dict(staged.config, processes={"worker": "rm -rf /", "beat": "b"})
    with pytest.raises(ConfigInvalid):
        files_of(staged, config=tampered)


@pytest.mark.parametrize(
    ("rc", "stderr", "started", "why"),
    [
        pytest.param(0, "", True, None, id="ok"),
        pytest.param(5, "Unit not loaded.", False, None, id="not-loaded"),
        pytest.param(1, "Access denied", False, "Access denied", id="refused"),
        pytest.param(3, "", False, "systemctl exit 3", id="silent"),
    ],
)
def test_instances_start_and_stop_by_their_one_name(rc, stderr, started, why):
    calls = []

    def run(argv):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, rc, "", stderr)

    assert start_instance(run, "shop", "r1") is started
    assert stop_instance(run, "shop", "r1") == why
    assert calls == [
        ["systemctl", "start", "--no-block", "shop@r1.service"],
        ["systemctl", "stop", "shop@r1.service"],
    ]
    assert instance_unit("shop", "*") == "shop@*.service"
    assert retire_timer("shop", "r1") == "flipback-retire-shop-r1"
    assert process_unit("shop", "*", "r1") == "shop.*@r1.service"
    assert service_home("/", "shop") == "/shop" and service_home("", "shop") == "/srv/shop"
