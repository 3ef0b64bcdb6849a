"""The config loader: defaults, cluster.toml, environment overrides, validation errors.

Every call passes ``env=`` explicitly so that the test process's environment cannot leak in.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from roomcast import config
from roomcast.config import NamespacePolicy, RecoverySettings, Settings
from roomcast.errors import ConfigError

REPO_CLUSTER_TOML = Path(__file__).resolve().parent.parent / "cluster.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    return config.load(write(tmp_path, text), env=env or {})


def config_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    """Load ``text`` expecting a ConfigError; return its message."""
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, env)
    return str(info.value)


# --- defaults --------------------------------------------------------------------------------


def test_defaults_load_without_a_file() -> None:
    """With no file and no environment the documented defaults are returned."""
    settings = config.load(None, env={})
    assert settings == Settings()
    assert settings.node.host == "127.0.0.1"
    assert settings.node.port == 3000
    assert settings.node.path == "/socket.io/"
    assert settings.engineio.ping_interval_ms == 25_000
    assert settings.engineio.ping_timeout_ms == 20_000
    assert settings.engineio.max_payload == 1_000_000
    assert settings.engineio.transports == ("polling", "websocket")
    assert settings.limits.max_attachments == 10
    assert settings.limits.max_ack_id == 2**53 - 1
    assert settings.limits.max_packets_per_body == 10_000
    assert settings.namespaces == (NamespacePolicy(name="/"),)


def test_explicit_env_replaces_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``env=`` is the only environment consulted when it is given."""
    monkeypatch.setenv("ROOMCAST__NODE__PORT", "4000")
    assert config.load(None, env={}).node.port == 3000
    assert config.load(None).node.port == 4000  # env=None reads os.environ


def test_settings_are_frozen() -> None:
    """Loaded settings cannot be mutated in place."""
    settings = config.load(None, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.node.port = 1  # type: ignore[misc]


def test_namespace_policy_lookup() -> None:
    """``namespace_policy`` finds a declared namespace and returns None for others."""
    settings = Settings()
    assert settings.namespace_policy("/") == NamespacePolicy()
    assert settings.namespace_policy("/nope") is None


# --- files -----------------------------------------------------------------------------------


def test_toml_file_loads(tmp_path: Path) -> None:
    """Values in a TOML file override the defaults; lists become tuples."""
    settings = load_text(
        tmp_path,
        """
        [node]
        port = 4000
        cors_origins = ["*"]

        [engineio]
        ping_interval_ms = 300
        ping_timeout_ms = 200
        transports = ["websocket"]

        [limits]
        max_attachments = 3

        [namespaces."/chat"]
        publish = "any"
        echo = true
        room_pattern = "[a-z]+"
        """,
    )
    assert settings.node.port == 4000
    assert settings.node.host == "127.0.0.1"  # untouched keys keep their default
    assert settings.node.cors_origins == ("*",)
    assert settings.engineio.ping_interval_ms == 300
    assert settings.engineio.ping_timeout_ms == 200
    assert settings.engineio.transports == ("websocket",)
    assert settings.limits.max_attachments == 3
    chat = settings.namespace_policy("/chat")
    assert chat == NamespacePolicy(name="/chat", publish="any", echo=True, room_pattern="[a-z]+")


def test_declared_namespaces_replace_the_default_one(tmp_path: Path) -> None:
    """A ``[namespaces]`` table lists every relayed namespace; ``/`` is not added implicitly."""
    settings = load_text(tmp_path, '[namespaces."/chat"]\n')
    assert [p.name for p in settings.namespaces] == ["/chat"]
    assert settings.namespace_policy("/") is None


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    """A path that does not exist is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "absent.toml", env={})


def test_invalid_toml_is_config_error(tmp_path: Path) -> None:
    """A TOML syntax error is a ConfigError naming the file."""
    path = write(tmp_path, "[node\nport = 1\n")
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        config.load(path, env={})


# --- environment -----------------------------------------------------------------------------


def test_env_overrides_port() -> None:
    """``ROOMCAST__NODE__PORT=3001`` sets ``node.port`` to the integer 3001."""
    assert config.load(None, env={"ROOMCAST__NODE__PORT": "3001"}).node.port == 3001


def test_env_overrides_the_file(tmp_path: Path) -> None:
    """An environment value wins over the same key in the file; other file keys stay."""
    settings = load_text(
        tmp_path, "[node]\nport = 4000\nhost = '0.0.0.0'\n", env={"ROOMCAST__NODE__PORT": "3001"}
    )
    assert settings.node.port == 3001
    assert settings.node.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("name", "raw", "get", "expected"),
    [
        ("ROOMCAST__NODE__HOST", "0.0.0.0", lambda s: s.node.host, "0.0.0.0"),
        ("ROOMCAST__NODE__APP", "app:setup", lambda s: s.node.app, "app:setup"),
        ("ROOMCAST__ENGINEIO__ALLOW_UPGRADES", "false", lambda s: s.engineio.allow_upgrades, False),
        (
            "ROOMCAST__ENGINEIO__TRANSPORTS",
            '["websocket"]',
            lambda s: s.engineio.transports,
            ("websocket",),
        ),
        ("ROOMCAST__LIMITS__MAX_ATTACHMENTS", "2", lambda s: s.limits.max_attachments, 2),
    ],
)
def test_env_values_are_parsed_as_toml_else_strings(
    name: str, raw: str, get: Any, expected: Any
) -> None:
    """Environment values are TOML values when they parse as such, plain strings otherwise."""
    assert get(config.load(None, env={name: raw})) == expected


def test_env_reaches_namespace_tables() -> None:
    """``ROOMCAST__NAMESPACES__/CHAT__ECHO`` sets ``namespaces./chat.echo``."""
    settings = config.load(None, env={"ROOMCAST__NAMESPACES__/CHAT__ECHO": "true"})
    policy = settings.namespace_policy("/chat")
    assert policy is not None and policy.echo is True


def test_unprefixed_env_is_ignored() -> None:
    """Only ``ROOMCAST__``-prefixed variables are read."""
    env = {"NODE__PORT": "1", "ROOMCAST_NODE_PORT": "1", "PORT": "1", "roomcast__node__port": "1"}
    assert config.load(None, env=env).node.port == 3000


def test_env_unknown_key_names_dotted_path() -> None:
    """A misspelt environment key is an unknown-key error naming its dotted path."""
    with pytest.raises(ConfigError, match=r"^node\.prot: unknown key"):
        config.load(None, env={"ROOMCAST__NODE__PROT": "1"})


def test_env_bad_value_names_dotted_path() -> None:
    """An environment value of the wrong type is an error naming the dotted key."""
    with pytest.raises(ConfigError, match=r"^node\.port: "):
        config.load(None, env={"ROOMCAST__NODE__PORT": "http"})


# --- validation: every error names the dotted key --------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("nodes = 1", "nodes"),
        ("[nodes]\nport = 1", "nodes"),
        ("[node]\nprt = 1", "node.prt"),
        ("[limits]\nmax_attachment = 1", "limits.max_attachment"),
        ('[namespaces."/chat"]\nbogus = 1', "namespaces./chat.bogus"),
        ('[namespaces."/chat"]\nname = "/other"', "namespaces./chat.name"),
        ("[bus]\ncurv = true", "bus.curv"),
        ('[[discovery.routers]]\npublic_key = "r.key"', "discovery.routers[0].public_key"),
    ],
)
def test_unknown_keys_name_the_dotted_key(tmp_path: Path, text: str, key: str) -> None:
    """An unknown key at any depth is a ConfigError that starts with its dotted path."""
    message = config_error(tmp_path, text)
    assert message.startswith(f"{key}: ")
    assert "unknown" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[node]\nport = "80"', "node.port"),
        ("[node]\nport = true", "node.port"),
        ("[node]\nport = 80.0", "node.port"),
        ("[node]\nhost = 1", "node.host"),
        ('[node]\ncors_origins = "*"', "node.cors_origins"),
        ("[node]\ncors_origins = [1]", "node.cors_origins[0]"),
        ("[engineio]\nallow_upgrades = 1", "engineio.allow_upgrades"),
        ('[limits]\nmax_attachments = "10"', "limits.max_attachments"),
        ('[namespaces."/chat"]\npublish = "all"', "namespaces./chat.publish"),
        ('[namespaces."/chat"]\nauth = "basic"', "namespaces./chat.auth"),
        ('[namespaces."/chat"]\necho = "yes"', "namespaces./chat.echo"),
        ("node = 3", "node"),
        ('[namespaces]\n"/chat" = 1', "namespaces./chat"),
        ('[bus]\ncurve = "yes"', "bus.curve"),
        ("[bus]\nallow_open_bus = 1", "bus.allow_open_bus"),
        ("[bus]\nsecret_key_file = 1", "bus.secret_key_file"),
        ("[router]\nallowed_keys_dir = false", "router.allowed_keys_dir"),
        ('[metrics]\naccess = "all"', "metrics.access"),
        ('[metrics]\nnetworks = "10.0.0.0/8"', "metrics.networks"),
        ('[metrics]\nenabled = "no"', "metrics.enabled"),
    ],
)
def test_bad_types_name_the_dotted_key(tmp_path: Path, text: str, key: str) -> None:
    """A value of the wrong type is a ConfigError that starts with its dotted path."""
    assert config_error(tmp_path, text).startswith(f"{key}: ")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[limits]\nmax_attachments = 0", "limits.max_attachments"),
        ("[limits]\nmax_packets_per_body = -1", "limits.max_packets_per_body"),
        ("[limits]\nmax_ack_id = 0", "limits.max_ack_id"),
        ("[engineio]\nping_interval_ms = 0", "engineio.ping_interval_ms"),
        ("[engineio]\nping_timeout_ms = -5", "engineio.ping_timeout_ms"),
        ("[engineio]\nmax_payload = 0", "engineio.max_payload"),
        ("[node]\nport = 65536", "node.port"),
        ("[node]\nport = -1", "node.port"),
        ('[node]\npath = "socket.io"', "node.path"),
        ('[node]\npath = "/socket.io"', "node.path"),
        ('[engineio]\ntransports = ["carrier-pigeon"]', "engineio.transports[0]"),
        ("[engineio]\ntransports = []", "engineio.transports"),
        ('[namespaces."/chat"]\nauth = "secret"', "namespaces./chat.secret"),
        ('[namespaces."/chat"]\nroom_pattern = "("', "namespaces./chat.room_pattern"),
        ('[namespaces."chat"]\n', "namespaces.chat"),
        ("[cluster]\nlink_timeout_ms = 250", "cluster.link_timeout_ms"),
        ("[cluster]\nmove_idle_ms = 0", "cluster.move_idle_ms"),
        ('[metrics]\npath = "metrics"', "metrics.path"),
        ('[metrics]\npath = "/metrics/"', "metrics.path"),
        ('[metrics]\npath = "/admin/metrics"', "metrics.path"),
        ('[metrics]\npath = "/socket.io/metrics"', "metrics.path"),
        ('[metrics]\npath = "/health"', "metrics.path"),
        ('[metrics]\nnetworks = ["10.0.0.0/33"]', "metrics.networks[0]"),
        ('[metrics]\nnetworks = ["prometheus.local"]', "metrics.networks[0]"),
    ],
)
def test_bad_ranges_name_the_dotted_key(tmp_path: Path, text: str, key: str) -> None:
    """A value outside its allowed range is a ConfigError that starts with its dotted path."""
    assert config_error(tmp_path, text).startswith(f"{key}: ")


def test_bus_settings_load_from_file_and_environment(tmp_path: Path) -> None:
    """``[bus]``, the router's keys and a router's own public key load from the file (their
    relative paths from the file's directory); the environment reaches them as any other
    key."""
    settings = load_text(
        tmp_path,
        """
[bus]
curve = true
secret_key_file = "keys/n1.key_secret"
router_public_key_file = "keys/router.key"

[router]
secret_key_file = "keys/router.key_secret"
allowed_keys_dir = "allowed"

[[discovery.routers]]
id = "r1"
public_key_file = "keys/r1.key"
""",
        env={"ROOMCAST__BUS__ALLOW_OPEN_BUS": "true", "ROOMCAST__BUS__SECRET_KEY_FILE": "1"},
    )
    assert settings.bus == config.BusSettings(True, "1", str(tmp_path / "keys/router.key"), True)
    assert settings.router.secret_key_file == str(tmp_path / "keys/router.key_secret")
    assert settings.router.allowed_keys_dir == str(tmp_path / "allowed")
    assert settings.discovery.routers[0].public_key_file == str(tmp_path / "keys/r1.key")
    assert Settings().bus == config.BusSettings(False, "", "", False)


def test_metrics_settings_load_from_file_and_environment(tmp_path: Path) -> None:
    """``[metrics]`` loads from the file (networks as addresses or networks), and the
    environment reaches it as any other section."""
    settings = load_text(
        tmp_path,
        '[metrics]\npath = "/prom"\nnetworks = ["10.0.0.0/8", "192.0.2.7", "fd00::/8"]\n',
        env={"ROOMCAST__METRICS__ENABLED": "false", "ROOMCAST__METRICS__ACCESS": "any"},
    )
    assert settings.metrics == config.MetricsSettings(
        False, "/prom", "any", ("10.0.0.0/8", "192.0.2.7", "fd00::/8")
    )
    assert Settings().metrics == config.MetricsSettings(True, "/metrics", "admin", ())


HASH = "$2b$04$" + "a" * 53  # the shape of a bcrypt hash (4 rounds)


def test_admin_ui_is_off_by_default_and_loads_from_file(tmp_path: Path) -> None:
    """``[admin_ui]`` is off unless turned on; its keys load from the file and the environment."""
    assert not Settings().admin_ui.enabled
    settings = load_text(
        tmp_path,
        f'[admin_ui]\nenabled = true\npassword_hash = "{HASH}"\nmode = "production"\n',
        env={"ROOMCAST__ADMIN_UI__CORS_ORIGINS": '["http://localhost:8080"]'},
    )
    admin = settings.admin_ui
    assert (admin.enabled, admin.password_hash, admin.mode) == (True, HASH, "production")
    assert admin.cors_origins == ("http://localhost:8080",)
    assert (admin.namespace, admin.username, admin.readonly) == ("/admin", "admin", False)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[admin_ui]\nenabled = true", "admin_ui.password_hash"),
        ('[admin_ui]\nenabled = true\npassword_hash = "secret"', "admin_ui.password_hash"),
        ('[admin_ui]\nnamespace = "admin"', "admin_ui.namespace"),
        ('[admin_ui]\nmode = "debug"', "admin_ui.mode"),
        ("[admin_ui]\nstats_interval_ms = 0", "admin_ui.stats_interval_ms"),
        (
            f'[admin_ui]\nenabled = true\npassword_hash = "{HASH}"\nnamespace = "/"',
            "admin_ui.namespace",
        ),
    ],
)
def test_bad_admin_ui_settings_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    """A missing or malformed password hash, a bad namespace or mode, or the admin namespace
    being a relay namespace is an error naming the key."""
    assert config_error(tmp_path, text).startswith(f"{key}: ")


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("tcp://127.0.0.1:5555", True),
        ("tcp://[::1]:5555", True),
        ("tcp://localhost:5555", True),
        ("http://127.0.0.1:5557", True),
        ("ipc:///tmp/bus", True),
        ("inproc://bus", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.10", False),
        ("tcp://10.0.0.10:5555", False),
        ("tcp://*:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://router.example.com:5555", False),
        ("", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    """Hosts, endpoints and URLs on this machine are loopback; wildcards and names are not."""
    assert config.is_loopback(address) is loopback


def test_the_open_bus_rule() -> None:
    """Beyond loopback an open bus is a ConfigError naming the key, unless CURVE is on or
    ``allow_open_bus`` says so."""
    with pytest.raises(ConfigError, match=r"^router\.host: 0\.0\.0\.0 is not a loopback"):
        config.refuse_open_bus("router.host", "0.0.0.0", curve=False, allow_open_bus=False)
    config.refuse_open_bus("router.host", "0.0.0.0", curve=True, allow_open_bus=False)
    config.refuse_open_bus("router.host", "0.0.0.0", curve=False, allow_open_bus=True)
    config.refuse_open_bus("router.host", "127.0.0.1", curve=False, allow_open_bus=False)


def test_port_zero_is_allowed(tmp_path: Path) -> None:
    """Port 0 (let the OS choose, as tests do) is valid."""
    assert load_text(tmp_path, "[node]\nport = 0").node.port == 0


def test_auth_with_secret_is_accepted(tmp_path: Path) -> None:
    """``auth = "secret"`` is valid once a secret is given."""
    settings = load_text(tmp_path, '[namespaces."/a"]\nauth = "secret"\nsecret = "s3"\n')
    assert settings.namespace_policy("/a") == NamespacePolicy(name="/a", auth="secret", secret="s3")


# --- paths ------------------------------------------------------------------------------------


def test_relative_paths_in_the_file_are_relative_to_its_directory(tmp_path: Path) -> None:
    """Every file and directory key, and a router's own key file: a relative path in
    cluster.toml names a file next to it wherever the process runs; an absolute one stays."""
    where = tmp_path / "etc" / "roomcast"
    where.mkdir(parents=True)
    path = where / "cluster.toml"
    path.write_text(
        """
[http]
tls_cert_file = "tls/node.pem"
tls_key_file = "tls/node.key"
tls_ca_file = "/srv/ca.pem"

[router]
secret_key_file = "keys/router.key_secret"
allowed_keys_dir = "allowed"

[bus]
secret_key_file = "keys/web-1.key_secret"
router_public_key_file = "../shared/router.key"

[[discovery.routers]]
xsub = "tcp://127.0.0.1:5555"
xpub = "tcp://127.0.0.1:5556"
public_key_file = "keys/r1.key"
""",
        encoding="utf-8",
    )
    settings = config.load(path, env={})
    assert settings.http.tls_cert_file == str(where / "tls/node.pem")
    assert settings.http.tls_key_file == str(where / "tls/node.key")
    assert settings.http.tls_ca_file == "/srv/ca.pem"
    assert settings.router.secret_key_file == str(where / "keys/router.key_secret")
    assert settings.router.allowed_keys_dir == str(where / "allowed")
    assert settings.bus.secret_key_file == str(where / "keys/web-1.key_secret")
    assert settings.bus.router_public_key_file == str(where / "../shared/router.key")
    assert settings.discovery.routers[0].public_key_file == str(where / "keys/r1.key")


def test_relative_paths_from_the_environment_are_relative_to_the_working_directory(
    tmp_path: Path,
) -> None:
    """An environment override is not in the file: its relative path stays as given (the
    process's working directory), and it replaces the file's value."""
    settings = load_text(
        tmp_path,
        '[bus]\nsecret_key_file = "keys/a.key_secret"\n',
        env={"ROOMCAST__BUS__SECRET_KEY_FILE": "keys/b.key_secret"},
    )
    assert settings.bus.secret_key_file == "keys/b.key_secret"
    assert load_text(tmp_path, "").bus.secret_key_file == ""  # empty: none, not a directory


def test_a_path_key_of_the_wrong_type_is_still_named(tmp_path: Path) -> None:
    assert "http.tls_cert_file" in config_error(tmp_path, "[http]\ntls_cert_file = 3\n")


# --- Settings.replace and the dict form ------------------------------------------------------


def test_replace_with_dotted_keys() -> None:
    """``replace(**{"node.port": 0})`` changes that key only and leaves the original alone."""
    base = Settings()
    changed = base.replace(**{"node.port": 0, "limits.max_attachments": 2})
    assert changed.node.port == 0
    assert changed.limits.max_attachments == 2
    assert changed.node.host == base.node.host
    assert changed.engineio == base.engineio
    assert base.node.port == 3000


def test_replace_reaches_namespace_policies() -> None:
    """A dotted key through ``namespaces./chat`` adds or changes that namespace's policy."""
    changed = Settings().replace(**{"namespaces./chat.publish": "any"})
    assert changed.namespace_policy("/chat") == NamespacePolicy(name="/chat", publish="any")
    assert changed.namespace_policy("/") == NamespacePolicy()


def test_replace_whole_section_with_a_table() -> None:
    """A section given as a table replaces the whole section; its missing keys are defaults."""
    changed = Settings().replace(**{"node.port": 5}).replace(node={"host": "0.0.0.0"})
    assert changed.node.host == "0.0.0.0"
    assert changed.node.port == 3000


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"limits.max_attachments": 0}, "limits.max_attachments"),
        ({"node.nope": 1}, "node.nope"),
        ({"namespaces./chat.publish": "all"}, "namespaces./chat.publish"),
        ({"node.port.x": 1}, "node.port.x"),
    ],
)
def test_replace_validates_like_load(overrides: dict[str, Any], key: str) -> None:
    """``replace`` runs the same validation and names the same dotted key."""
    with pytest.raises(ConfigError) as info:
        Settings().replace(**overrides)
    assert str(info.value).startswith(f"{key}: ")


def test_dict_form_round_trips() -> None:
    """``from_dict(to_dict(s))`` gives back ``s``, for the defaults and a customised tree."""
    custom = Settings().replace(
        **{
            "node.cors_origins": ["*"],
            "engineio.transports": ["websocket"],
            "namespaces./chat.auth": "secret",
            "namespaces./chat.secret": "x",
            "recovery.max_packets": 5,
            "namespaces./chat.recovery.enabled": True,
        }
    )
    for settings in (Settings(), custom):
        assert config.from_dict(config.to_dict(settings)) == settings


# --- the repository's cluster.toml -----------------------------------------------------------


def _require_repo_cluster_toml() -> Path:
    # `make run` starts the cluster from this file: its absence is a failure, not a skip.
    assert REPO_CLUSTER_TOML.is_file(), f"{REPO_CLUSTER_TOML} is missing"
    return REPO_CLUSTER_TOML


def test_repository_cluster_toml_loads() -> None:
    """The cluster.toml shipped with the repository is accepted by the loader."""
    settings = config.load(_require_repo_cluster_toml(), env={})
    assert isinstance(settings, Settings)


def _leaf_keys(section: Any, prefix: str) -> list[str]:
    keys: list[str] = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            keys += _leaf_keys(value, f"{prefix}.{f.name}")
        elif value and isinstance(value, tuple) and dataclasses.is_dataclass(value[0]):
            keys += _leaf_keys(value[0], f"{prefix}.{f.name}")
        else:
            keys.append(f"{prefix}.{f.name}")
    return keys


def test_repository_cluster_toml_documents_every_key() -> None:
    """Every setting is named in cluster.toml, set or commented out (STYLE.md #8)."""
    text = _require_repo_cluster_toml().read_text(encoding="utf-8")
    defaults = Settings()
    missing = []
    for f in dataclasses.fields(defaults):
        section = NamespacePolicy() if f.name == "namespaces" else getattr(defaults, f.name)
        for dotted in _leaf_keys(section, f.name):
            name = dotted.rsplit(".", 1)[1]
            if name == "name" and f.name == "namespaces":
                continue  # a namespace's name is its table key
            if not re.search(rf"^[ \t#]*{re.escape(name)}\s*=", text, re.MULTILINE):
                missing.append(dotted)
    assert missing == []


# --- connection state recovery -----------------------------------------------------------------


def test_recovery_is_off_by_default_everywhere() -> None:
    """Recovery is off unless asked for (as in Socket.IO), for declared and app namespaces."""
    settings = config.load(None, env={})
    assert settings.recovery == RecoverySettings(enabled=False)
    assert settings.recovery_of("/").enabled is False
    assert settings.recovery_of("/made-by-an-app") == settings.recovery


def test_namespace_recovery_overrides_the_global_table_key_by_key(tmp_path: Path) -> None:
    """``[namespaces."/x".recovery]`` overrides ``[recovery]`` for that namespace only, key by
    key; undeclared (app) namespaces get ``[recovery]``."""
    settings = load_text(
        tmp_path,
        "[recovery]\nenabled = true\nmax_packets = 50\n"
        '[namespaces."/"]\n'
        '[namespaces."/quiet"]\n'
        '[namespaces."/quiet".recovery]\nenabled = false\n'
        '[namespaces."/long".recovery]\nmax_disconnection_ms = 600000\n',
    )
    assert settings.recovery_of("/") == RecoverySettings(enabled=True, max_packets=50)
    assert settings.recovery_of("/quiet") == RecoverySettings(enabled=False, max_packets=50)
    assert settings.recovery_of("/long") == RecoverySettings(
        enabled=True, max_packets=50, max_disconnection_ms=600_000
    )
    assert settings.recovery_of("/app") == RecoverySettings(enabled=True, max_packets=50)


def test_a_later_global_recovery_change_reaches_namespaces_without_their_own() -> None:
    """``replace`` of a ``[recovery]`` key reaches every namespace that does not set that key."""
    base = Settings().replace(**{"namespaces./chat.recovery.max_packets": 7})
    changed = base.replace(**{"recovery.enabled": True, "recovery.max_packets": 9})
    assert changed.recovery_of("/") == RecoverySettings(enabled=True, max_packets=9)
    assert changed.recovery_of("/chat") == RecoverySettings(enabled=True, max_packets=7)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[recovery]\nmax_packets = 0", "recovery.max_packets"),
        ("[recovery]\nmax_sessions = 0", "recovery.max_sessions"),
        ("[recovery]\nenabled = 1", "recovery.enabled"),
        ("[recovery]\nbogus = 1", "recovery.bogus"),
        ('[namespaces."/a".recovery]\nmax_bytes = -1', "namespaces./a.recovery.max_bytes"),
        ('[namespaces."/a".recovery]\nnope = true', "namespaces./a.recovery.nope"),
        ('[namespaces."/a"]\nrecovery = 1', "namespaces./a.recovery"),
    ],
)
def test_bad_recovery_settings_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    """Recovery keys are validated like every other, and errors name the dotted key."""
    assert config_error(tmp_path, text).startswith(f"{key}: ")
