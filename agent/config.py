"""The whole configuration as one validated model.

Sources, strongest first: environment variables `EGRESS_AGENT_<SECTION>__<KEY>` (double
underscore between levels, values for lists and dicts as JSON), then the YAML file
(`--config PATH`, else `/etc/egress-agent/agent.yaml` when it exists), then the
defaults below — which work unprivileged: SQLite under the state directory and metrics
on 127.0.0.1 only. Every key is documented in README.md ("Configuration").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.config_env import EnvJSONError, env_layer, merge
from agent.errors import UserFacingError

DEFAULT_CONFIG_PATH = Path("/etc/egress-agent/agent.yaml")
DEFAULT_METRICS_PORT = 9813
ENV_PREFIX = "EGRESS_AGENT_"


class ConfigError(UserFacingError):
    """A config problem a user can fix: the message names the file and the key."""


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/egress-agent")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "egress-agent"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentSection(_Section):
    state_dir: Path = Field(default_factory=default_state_dir)
    host_id: str | None = None  # default: generated once and kept in state_dir/host_id
    hostname: str | None = None  # default: the kernel's hostname
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    watchdog_interval: float = Field(default=10.0, gt=0)
    stall_after: float = Field(default=120.0, gt=0)  # work queued, no progress: not healthy


class DatabaseSection(_Section):
    url: str | None = None  # default: sqlite:///<state_dir>/agent.db
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    flush_interval: float = Field(default=0.1, gt=0, le=60)
    queue_size: int = Field(default=100_000, ge=1)
    auto_upgrade: bool = True
    spool_path: Path | None = None  # fleet store: local spool (default state_dir/spool.db)
    spool_max_bytes: int = Field(default=1 << 30, ge=1 << 20)
    forward_batch_size: int = Field(default=5000, ge=1, le=100_000)  # spool → central store
    forward_method: Literal["copy", "executemany"] = "copy"  # PostgreSQL bulk path
    forward_timeout: float = Field(default=30.0, gt=0)  # a batch slower than this is abandoned
    forward_backoff_max: float = Field(default=30.0, gt=0)  # longest wait between retries
    forward_stop_seconds: float = Field(default=5.0, ge=0)  # forwarding allowed at stop
    # a batch that is not full waits this long for more events (fewer transactions)
    forward_linger: float = Field(default=1.0, ge=0, le=60)

    @field_validator("url")
    @classmethod
    def _url_parses(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            url = make_url(v)
        except ArgumentError as e:
            raise ValueError(f"not a SQLAlchemy URL: {e}") from None
        try:  # what `run` would refuse, `config check` refuses too
            url.get_dialect()
        except NoSuchModuleError:
            raise ValueError(
                f"unknown database dialect {url.drivername!r}: use sqlite:/// or postgresql://"
            ) from None
        return v


class MetricsSection(_Section):
    enabled: bool = True
    listen: str = f"127.0.0.1:{DEFAULT_METRICS_PORT}"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    basic_auth_user: str | None = None
    basic_auth_password_sha256: str | None = None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        _host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be host:port, e.g. 127.0.0.1:9813")
        return v

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @field_validator("basic_auth_password_sha256")
    @classmethod
    def _sha256_hex(cls, v: str | None) -> str | None:
        if v is not None and (len(v) != 64 or any(c not in "0123456789abcdefABCDEF" for c in v)):
            raise ValueError("must be 64 hex digits: printf %s 'PASSWORD' | sha256sum")
        return v.lower() if v else v

    @model_validator(mode="after")
    def _pairs(self) -> MetricsSection:
        # half a TLS or auth setup would silently serve metrics in the clear or unguarded
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if (self.basic_auth_user is None) != (self.basic_auth_password_sha256 is None):
            raise ValueError("basic_auth_user and basic_auth_password_sha256 must be set together")
        return self

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class FilesSection(_Section):
    roots: list[Path] = Field(default_factory=list)
    exclude: list[str] = Field(
        default_factory=lambda: ["**/.git/objects/**", "**/__pycache__/**", "**/*.swp", "**/*~"]
    )
    removable: list[Path] = Field(default_factory=list)  # extra mount points seen as removable
    cloud_sync: list[Path] = Field(default_factory=list)  # extra cloud-sync folders
    follow_mounts: bool = True  # watch removable media and shares mounted while running
    mount_poll_interval: float = Field(default=2.0, gt=0)
    fanotify: Literal["auto", "on", "off"] = "auto"


class NetworkSection(_Section):
    interfaces: list[str] = Field(default_factory=list)  # empty: the network sensor is off
    internal_networks: list[str] = Field(
        default_factory=lambda: [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "fc00::/7",
        ]
    )
    approved_destinations: list[str] = Field(default_factory=list)  # CIDRs or host names
    # git remotes a push may go to: host names or globs, or URL prefixes (repository.approved)
    approved_git_remotes: list[str] = Field(default_factory=list)
    foreign_networks: list[str] = Field(default_factory=list)  # CIDRs known to be abroad
    domestic_country: str = "CN"
    # unset: the country table installed with the package (iptocc); else a .mmdb
    # (GeoLite2/GeoIP2 Country or City, DB-IP) or a CSV of cidr,country
    country_db: Path | None = None
    asn_db: Path | None = None  # .mmdb of address -> organisation (GeoLite2-ASN, DB-IP ASN)
    country_data_max_age_days: int = Field(default=180, ge=1)  # older data: a warning
    services_file: Path | None = None  # site's known services, over agent/data/services.yaml
    idle_timeout: float = Field(default=60.0, gt=0)
    active_timeout: float = Field(default=300.0, gt=0)
    # open flows held at once; when full the longest-idle are exported as "evicted"
    max_flows: int = Field(default=65_536, ge=16, le=16_777_216)
    kernel_accounting: bool = True  # sock_diag byte counts for local sockets
    socket_buffer_bytes: int = Field(default=8 << 20, ge=1 << 16)


class ClassifySection(_Section):
    enabled: bool = True
    workers: int = Field(default=2, ge=1, le=64)
    max_text_bytes: int = Field(default=4 << 20, ge=1024)
    max_archive_depth: int = Field(default=3, ge=0)
    max_archive_members: int = Field(default=10_000, ge=1)
    max_archive_expanded_bytes: int = Field(default=2 << 30, ge=1)
    max_compression_ratio: float = Field(default=200.0, gt=1)
    use_magika: bool = True
    hash_cache: Path | None = None  # default state_dir/hashcache.db
    event_timeout: float = Field(default=30.0, gt=0)  # past it an event goes on "deferred"
    # seconds the content tier may spend on one file; past it the parsers stop (timeout)
    file_deadline: float = Field(default=20.0, gt=0, le=3600)


class PoliciesSection(_Section):
    paths: list[Path] = Field(default_factory=list)  # site packs, beside the shipped ones
    builtin: bool = True  # load the packs shipped in policies/
    disabled: list[str] = Field(default_factory=list)  # pack ids switched off
    model_parameter_threshold: int = Field(default=1_000_000_000, ge=0)
    # pack parameters by name (e.g. rd-assets' dataset_min_rows); replace the packs' values
    parameters: dict[str, StrictInt | float | StrictStr | StrictBool] = Field(default_factory=dict)
    watch_interval: float = Field(default=2.0, ge=0)  # seconds between pack mtime checks; 0 off

    def pack_parameters(self) -> dict[str, Any]:
        """What replaces the packs' `parameters:`: `parameters`, then the dedicated key."""
        return {"model_parameter_threshold": self.model_parameter_threshold, **self.parameters}


class IncidentsSection(_Section):
    correlation_window: float = Field(default=900.0, gt=0)
    dedup_window: float = Field(default=3600.0, gt=0)
    byte_tolerance: float = Field(default=0.5, gt=0, le=10)
    checkpoint_every: int = Field(default=100, ge=1)


class JobsSection(_Section):
    retention_days: int = Field(default=90, ge=1)
    retention_interval: float = Field(default=86400.0, gt=0)
    rescan_interval: float = Field(default=21600.0, gt=0)
    export_dir: Path | None = None  # scheduled incident export; off when unset
    export_format: Literal["jsonl", "ecs", "ocsf", "csv", "cef"] = "ecs"
    export_interval: float = Field(default=300.0, gt=0)
    maintenance_interval: float = Field(default=3600.0, gt=0)


class SensorsSection(_Section):
    enabled: list[str] = Field(default_factory=lambda: ["files", "network"])
    synthetic_count: int = Field(default=0, ge=0)  # load generator for drills and benchmarks
    synthetic_rate: float = Field(default=0.0, ge=0)  # events/s, 0 = as fast as possible


class Settings(BaseModel):
    """Every section; `load_settings` lays the environment over the file (config_env)."""

    model_config = ConfigDict(extra="forbid")

    agent: AgentSection = Field(default_factory=AgentSection)
    database: DatabaseSection = Field(default_factory=DatabaseSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    files: FilesSection = Field(default_factory=FilesSection)
    network: NetworkSection = Field(default_factory=NetworkSection)
    classify: ClassifySection = Field(default_factory=ClassifySection)
    policies: PoliciesSection = Field(default_factory=PoliciesSection)
    incidents: IncidentsSection = Field(default_factory=IncidentsSection)
    jobs: JobsSection = Field(default_factory=JobsSection)
    sensors: SensorsSection = Field(default_factory=SensorsSection)

    # where the YAML came from (not a key users set)
    _source: Path | None = None

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.agent.state_dir / 'agent.db'}"

    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def state_dir(self) -> Path:
        return self.agent.state_dir


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x})") from None
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the config must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def _format_error(err: ValidationError, path: Path | None) -> str:
    where = str(path) if path else "built-in defaults"
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        env = ENV_PREFIX + "__".join(str(p) for p in e["loc"]).upper()
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{where}: key '{key}' (env {env}): {msg}")
    return "\n".join(lines)


def load_settings(path: Path | str | None = None) -> Settings:
    """Load and validate the config; raise ConfigError naming file and key on a problem."""
    cfg_path: Path | None
    if path is not None:
        cfg_path = Path(path)
        if not cfg_path.exists():
            raise ConfigError(f"{cfg_path}: config file not found")
    elif DEFAULT_CONFIG_PATH.exists():
        cfg_path = DEFAULT_CONFIG_PATH
    else:
        cfg_path = None
    data = _read_yaml(cfg_path) if cfg_path else {}
    where = str(cfg_path) if cfg_path else "built-in defaults"
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(f"{where}: section names must be text, got {bad_keys[0]!r}")
    check_environment(os.environ)
    try:
        data = merge(data, env_layer(Settings, os.environ, ENV_PREFIX, _ENV_NOT_KEYS))
        settings = Settings(**data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, cfg_path)) from None
    except EnvJSONError as e:  # an environment value that is not valid JSON
        raise ConfigError(
            f"environment: {e.name}: not valid JSON"
            " (lists and mappings are written as JSON, e.g. '[\"/srv/data\"]')"
        ) from None
    except RecursionError:
        raise ConfigError(f"{where} or environment: a value is nested too deeply") from None
    settings._source = cfg_path
    return settings


# variables with our prefix that are not config keys
_ENV_NOT_KEYS = frozenset({"EGRESS_AGENT_CONFIG"})


def check_environment(environ: Mapping[str, str]) -> None:
    """An `EGRESS_AGENT_*` variable must name a real section and key, like a YAML key.

    A misspelled section (`EGRESS_AGENT_FILE__ROOTS`) must not be ignored: the operator
    would believe the roots are set while the agent watches the defaults.
    """
    sections = Settings.model_fields
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in _ENV_NOT_KEYS:
            continue
        section, _, key = upper[len(ENV_PREFIX) :].lower().partition("__")
        field = sections.get(section)
        if field is None:
            raise ConfigError(
                f"environment: {name}: unknown section {section!r}"
                f" (sections: {', '.join(sections)})"
            )
        model = field.annotation
        fields = getattr(model, "model_fields", {})
        first = key.partition("__")[0]
        if key and first not in fields:
            raise ConfigError(f"environment: {name}: unknown key {first!r} in section {section!r}")
