"""The ``autoseg serve`` configuration: one TOML or JSON file, validated key by key, plus command-line
overrides.

Every error names the key (``routes[1].model: expected a string``); unknown keys are refused so a typo does
not silently leave a default in place. :data:`EXAMPLE_CONFIG` is the complete commented example that
``autoseg serve --example-config`` prints (and that a test loads, so it stays valid).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomllib

from autoseg.errors import ServeConfigError

FORMATS = ("rtstruct", "dicom-seg")
PRESETS = ("fast", "accurate")
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII but backslash, 1-16 characters


@dataclass(frozen=True)
class Destination:
    """A DICOM node results are sent to (C-STORE)."""

    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = False
    ca_certificates: Path | None = None
    """Certificates the destination's server certificate is checked against (TLS; default: the system's)."""
    certificate: Path | None = None
    """Our client certificate, for a destination that verifies clients (TLS)."""
    private_key: Path | None = None


@dataclass(frozen=True)
class Route:
    """Which series go to which model and where the results go. Empty criteria match anything; within a
    criterion any pattern may match (shell-style wildcards, case-insensitive)."""

    name: str
    model: Path
    destinations: tuple[str, ...]
    formats: tuple[str, ...] = ("rtstruct",)
    modality: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    series_description: tuple[str, ...] = ()
    calling_ae: tuple[str, ...] = ()


@dataclass(frozen=True)
class TlsSettings:
    """DICOM TLS for the listening node."""

    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None
    """Certificates client certificates are checked against (needed with ``require_client_certificate``)."""
    require_client_certificate: bool = False


@dataclass(frozen=True)
class SendPolicy:
    """Retries of a C-STORE to a destination: ``attempts`` tries, waiting ``backoff_s``, then twice as long
    each time, at most ``max_backoff_s``."""

    attempts: int = 5
    backoff_s: float = 2.0
    max_backoff_s: float = 60.0
    timeout_s: float = 30.0


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``autoseg serve`` needs (see :data:`EXAMPLE_CONFIG` for each key's meaning)."""

    spool: Path
    ae_title: str = "AUTOSEG"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aes: tuple[str, ...] = ()
    allow_any_calling_ae: bool = False
    quiet_period_s: float = 30.0
    complete_on_release: bool = True
    min_free_mb: float = 1024.0
    keep_days: float = 7.0
    unmatched_keep_days: float = 7.0
    device: str = "auto"
    preset: str = "fast"
    threads: int | None = None
    tls: TlsSettings | None = None
    send: SendPolicy = field(default_factory=SendPolicy)
    destinations: Mapping[str, Destination] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()

    def check(self) -> ServeConfig:
        """Cross-key checks: routes name known destinations, someone may call, there is a route."""
        if not self.routes:
            raise ServeConfigError("routes: no route; add a [[routes]] table or give -m MODEL --send-to ...")
        for index, route in enumerate(self.routes):
            unknown = [d for d in route.destinations if d not in self.destinations]
            if unknown:
                raise ServeConfigError(
                    f"routes[{index}].destinations: unknown destination(s) {', '.join(unknown)}; "
                    f"known: {', '.join(self.destinations) or 'none'}"
                )
        if not self.allowed_calling_aes and not self.allow_any_calling_ae:
            raise ServeConfigError(
                "node.allowed_calling_aes: empty, so nobody may send; list the senders' AE titles "
                "(--allow AE) or set node.allow_any_calling_ae = true for an open node"
            )
        if self.tls and self.tls.require_client_certificate and self.tls.ca_certificates is None:
            raise ServeConfigError("tls.ca_certificates: needed to verify client certificates")
        return self


@dataclass(frozen=True)
class ServeOverrides:
    """Command-line flags; ``None``/empty leaves the file's value. ``model`` adds a first route matching
    every series; ``send_to`` (``AE@HOST:PORT``) sets that route's (or, without ``model``, every route's)
    destinations; ``formats`` sets every route's formats."""

    model: Path | None = None
    spool: Path | None = None
    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    send_to: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    allow_any: bool = False
    quiet_period_s: float | None = None
    formats: tuple[str, ...] = ()
    device: str | None = None


def load_config(path: Path | None, overrides: ServeOverrides) -> ServeConfig:
    """The file's configuration (``None``: flags only) with ``overrides`` on top, checked."""
    table = read_config_file(path) if path is not None else {}
    node = dict(table.get("node", {}))
    if overrides.spool is None and "spool" not in node:
        raise ServeConfigError("node.spool: missing; give --spool DIR or set it in the configuration file")
    config = parse_config(table, default_spool=overrides.spool)
    return apply_overrides(config, overrides).check()


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's tables: TOML (``.toml``) or JSON (anything else)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ServeConfigError(f"{path}: cannot read the configuration ({error.strerror})") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise ServeConfigError(f"{path}: not valid {kind}: {error}") from None
    if not isinstance(data, dict):
        raise ServeConfigError(f"{path}: expected a table of settings at the top level")
    return data


def parse_config(table: Mapping[str, Any], *, default_spool: Path | None = None) -> ServeConfig:
    """Validate the file's tables into a :class:`ServeConfig` (before overrides and cross-key checks)."""
    _only(table, ("node", "tls", "send", "destinations", "routes"), "")
    node = _Table(table.get("node", {}), "node")
    spool = node.path("spool", default_spool)
    config = ServeConfig(
        spool=spool if spool is not None else Path("spool"),
        ae_title=_ae_title(node.text("ae_title", "AUTOSEG"), "node.ae_title"),
        host=node.text("host", "0.0.0.0"),
        port=_port(node.number("port", 11112, integer=True), "node.port"),
        allowed_calling_aes=tuple(
            _ae_title(t, "node.allowed_calling_aes") for t in node.texts("allowed_calling_aes")
        ),
        allow_any_calling_ae=node.flag("allow_any_calling_ae", False),
        quiet_period_s=node.number("quiet_period_s", 30.0, minimum=0.0),
        complete_on_release=node.flag("complete_on_release", True),
        min_free_mb=node.number("min_free_mb", 1024.0, minimum=0.0),
        keep_days=node.number("keep_days", 7.0, minimum=0.0),
        unmatched_keep_days=node.number("unmatched_keep_days", 7.0, minimum=0.0),
        device=node.text("device", "auto"),
        preset=node.choice("preset", "fast", PRESETS),
        threads=node.optional_int("threads"),
        tls=_tls(table.get("tls")),
        send=_send(_Table(table.get("send", {}), "send")),
        destinations=_destinations(table.get("destinations", {})),
        routes=tuple(_route(item, index) for index, item in enumerate(_list(table, "routes"))),
    )
    node.done()
    return config


def apply_overrides(config: ServeConfig, flags: ServeOverrides) -> ServeConfig:
    """``config`` with the command-line flags on top (see :class:`ServeOverrides`)."""
    destinations = dict(config.destinations)
    sent_to = []
    for text in flags.send_to:
        destination = parse_send_to(text)
        destinations[destination.name] = destination
        sent_to.append(destination.name)
    routes = list(config.routes)
    if flags.model is not None:
        chosen = tuple(sent_to) or tuple(destinations)
        routes.insert(0, Route("command-line", flags.model, chosen, flags.formats or ("rtstruct",)))
    elif sent_to:
        routes = [replace(route, destinations=tuple(sent_to)) for route in routes]
    if flags.formats:
        routes = [replace(route, formats=_formats(flags.formats, "--format")) for route in routes]
    allowed = config.allowed_calling_aes + tuple(_ae_title(a, "--allow") for a in flags.allow)
    return replace(
        config,
        spool=flags.spool or config.spool,
        ae_title=_ae_title(flags.ae_title, "--ae-title") if flags.ae_title else config.ae_title,
        host=flags.host or config.host,
        port=_port(flags.port, "--port") if flags.port is not None else config.port,
        allowed_calling_aes=tuple(dict.fromkeys(allowed)),
        allow_any_calling_ae=config.allow_any_calling_ae or flags.allow_any,
        quiet_period_s=config.quiet_period_s if flags.quiet_period_s is None else flags.quiet_period_s,
        device=flags.device or config.device,
        destinations=destinations,
        routes=tuple(routes),
    )


def parse_send_to(text: str) -> Destination:
    """``AE@HOST:PORT`` -> a destination named after its AE title."""
    match = re.fullmatch(r"([^@]+)@(.+):(\d+)", text)
    if not match:
        raise ServeConfigError(f"--send-to {text}: expected AE@HOST:PORT, e.g. TPS@10.0.0.5:104")
    ae_title = _ae_title(match.group(1), "--send-to")
    return Destination(ae_title, ae_title, match.group(2), _port(int(match.group(3)), "--send-to"))


# ------------------------------------------------------------------------------------------ validation


class _Table:
    """One table of the file: typed reads that name the key on error, and a check for unknown keys."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, Mapping):
            raise ServeConfigError(f"{where}: expected a table")
        self.data, self.where, self.seen = data, where, set[str]()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str) -> Any:
        self.seen.add(name)
        return self.data.get(name)

    def text(self, name: str, default: str | None = None) -> str:
        value = self.get(name)
        if value is None and default is not None:
            return default
        if not isinstance(value, str) or not value:
            raise ServeConfigError(f"{self.key(name)}: expected a non-empty string, got {value!r}")
        return value

    def choice(self, name: str, default: str, choices: Sequence[str]) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise ServeConfigError(f"{self.key(name)}: {value!r} is not one of {', '.join(choices)}")
        return value

    def path(self, name: str, default: Path | None = None) -> Path | None:
        value = self.get(name)
        return default if value is None else Path(self.text(name)).expanduser()

    def texts(self, name: str) -> tuple[str, ...]:
        value = self.get(name)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ServeConfigError(f"{self.key(name)}: expected a list of strings, got {value!r}")
        return tuple(value)

    def flag(self, name: str, default: bool) -> bool:
        value = self.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ServeConfigError(f"{self.key(name)}: expected true or false, got {value!r}")
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0, integer: bool = False) -> Any:
        value = self.get(name)
        if value is None:
            return default
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
            kind = "an integer" if integer else "a number"
            raise ServeConfigError(f"{self.key(name)}: expected {kind} >= {minimum:g}, got {value!r}")
        return value

    def optional_int(self, name: str) -> int | None:
        return None if self.data.get(name) is None else int(self.number(name, 1, minimum=1, integer=True))

    def done(self) -> None:
        _only(self.data, tuple(self.seen), self.where)


def _only(data: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ServeConfigError(
            f"{prefix}{unknown[0]}: unknown key; known keys{' of ' + where if where else ''}: "
            f"{', '.join(sorted(known))}"
        )


def _list(table: Mapping[str, Any], name: str) -> list[Any]:
    value = table.get(name, [])
    if not isinstance(value, list):
        raise ServeConfigError(f"{name}: expected a list of tables ([[{name}]])")
    return value


def _ae_title(value: str, where: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ServeConfigError(f"{where}: {value!r} is not an AE title (1-16 printable characters, no '\\')")
    return value.strip()


def _port(value: int, where: str) -> int:
    if not 0 <= value <= 65535:
        raise ServeConfigError(f"{where}: {value} is not a TCP port (0-65535)")
    return value


def _formats(values: Sequence[str], where: str) -> tuple[str, ...]:
    unknown = [v for v in values if v not in FORMATS]
    if unknown or not values:
        raise ServeConfigError(f"{where}: {', '.join(unknown) or 'empty'}; choose from {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(values))


def _tls(data: object) -> TlsSettings | None:
    if data is None:
        return None
    table = _Table(data, "tls")
    certificate, key = table.path("certificate"), table.path("private_key")
    if certificate is None or key is None:
        raise ServeConfigError("tls.certificate and tls.private_key: both are needed for TLS")
    settings = TlsSettings(
        certificate, key, table.path("ca_certificates"), table.flag("require_client_certificate", False)
    )
    table.done()
    return settings


def _send(table: _Table) -> SendPolicy:
    policy = SendPolicy(
        attempts=int(table.number("attempts", 5, minimum=1, integer=True)),
        backoff_s=float(table.number("backoff_s", 2.0)),
        max_backoff_s=float(table.number("max_backoff_s", 60.0)),
        timeout_s=float(table.number("timeout_s", 30.0, minimum=0.1)),
    )
    table.done()
    return policy


def _destinations(data: object) -> dict[str, Destination]:
    if not isinstance(data, Mapping):
        raise ServeConfigError("destinations: expected a table of named destinations ([destinations.NAME])")
    found = {}
    for name, item in data.items():
        table = _Table(item, f"destinations.{name}")
        found[name] = Destination(
            name=name,
            ae_title=_ae_title(table.text("ae_title"), table.key("ae_title")),
            host=table.text("host"),
            port=_port(table.number("port", -1, integer=True), table.key("port")),
            tls=table.flag("tls", False),
            ca_certificates=table.path("ca_certificates"),
            certificate=table.path("certificate"),
            private_key=table.path("private_key"),
        )
        table.done()
    return found


def _route(data: object, index: int) -> Route:
    table = _Table(data, f"routes[{index}]")
    model = table.path("model")
    if model is None:
        raise ServeConfigError(f"routes[{index}].model: missing; a work directory or a model .zip")
    route = Route(
        name=table.text("name", f"route-{index + 1}"),
        model=model,
        destinations=table.texts("destinations"),
        formats=_formats(table.texts("formats") or ("rtstruct",), table.key("formats")),
        modality=table.texts("modality"),
        body_part=table.texts("body_part"),
        series_description=table.texts("series_description"),
        calling_ae=table.texts("calling_ae"),
    )
    table.done()
    return route


EXAMPLE_CONFIG = """\
# autoseg serve configuration (TOML). Start with: autoseg serve --config autoseg-serve.toml
# Command-line flags override these values (autoseg serve --help).

[node]
ae_title = "AUTOSEG"                   # our AE title (senders call it)
host = "0.0.0.0"                       # address to listen on
port = 11112                           # DICOM port
spool = "/var/lib/autoseg/spool"       # received instances, results and the job queue (jobs.sqlite)
allowed_calling_aes = ["CT_SIM", "PACS"]  # senders allowed to associate; others are rejected
allow_any_calling_ae = false           # true: an open node (anyone may send); opt-in only
quiet_period_s = 30                    # a series is complete after this long without a new instance
complete_on_release = true             # ... or when the sender releases its association
min_free_mb = 1024                     # below this free space in the spool, associations are refused
keep_days = 7                          # spooled inputs of finished jobs are deleted after this long
unmatched_keep_days = 7                # series no route matched are kept this long
device = "auto"                        # cpu, cuda, cuda:1 ... (auto: cuda if available)
preset = "fast"                        # fast: one fold, no mirroring; accurate: all folds, mirroring
# threads = 4                          # CPU threads for prediction (default: torch's)

# DICOM TLS for incoming associations (leave the table out for plain TCP).
# [tls]
# certificate = "/etc/autoseg/node.crt"
# private_key = "/etc/autoseg/node.key"
# ca_certificates = "/etc/autoseg/clients-ca.crt"   # checks client certificates
# require_client_certificate = true

[send]
attempts = 5                           # C-STORE tries per destination before the job fails
backoff_s = 2.0                        # wait before the 2nd try, doubled each time ...
max_backoff_s = 60.0                   # ... up to this
timeout_s = 30.0                       # network timeout of one association

[destinations.TPS]                     # where results go: a planning system ...
ae_title = "ECLIPSE"
host = "10.0.0.5"
port = 104
tls = false                            # true: DICOM TLS; then optionally:
# ca_certificates = "/etc/autoseg/tps-ca.crt"        # checks the destination's certificate
# certificate = "/etc/autoseg/node.crt"              # our client certificate, if it asks for one
# private_key = "/etc/autoseg/node.key"

[destinations.PACS]                    # ... and the archive
ae_title = "ORTHANC"
host = "10.0.0.6"
port = 4242

# Routes: the first whose criteria all match a series wins. Empty or absent criteria match anything;
# patterns are case-insensitive with * and ? wildcards. A last route without criteria is the default;
# without one, unmatched series are logged, kept for unmatched_keep_days, and not predicted.
[[routes]]
name = "thorax-ct"
modality = ["CT"]
body_part = ["CHEST", "THORAX", "LUNG"]
series_description = ["*thorax*", "*lung*", "*chest*"]
calling_ae = ["CT_SIM"]
model = "/opt/autoseg/models/thorax.zip"   # an exported model (autoseg export-model) or a work directory
formats = ["rtstruct"]                     # rtstruct, dicom-seg, or both
destinations = ["TPS", "PACS"]

[[routes]]
name = "default"
model = "/opt/autoseg/models/general.zip"
formats = ["rtstruct", "dicom-seg"]
destinations = ["PACS"]
"""
