"""Settings: loaded once (defaults, then an optional TOML file, then the environment) and passed down.

Every key is settable as ``DICOMNODE_<SECTION>__<KEY>``; a TOML file is named by ``--config FILE`` or
``DICOMNODE_CONFIG``. Environment values override the file, the file overrides the defaults.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from node.domain import BasalRule, ReportObject
from node.errors import ConfigError

ENV_PREFIX = "DICOMNODE_"
CONFIG_ENV = "DICOMNODE_CONFIG"
#: The crash tests' switch (:mod:`node.failpoints`): no setting, but no stray variable either.
FAILPOINT_ENV = "DICOMNODE_FAILPOINT"
#: Model pixels (2 mm each) the heart window extends beyond the LV on every side, by default, and the
#: least a margin may be: below it the window's edge cuts into the context the network needs around the
#: LV. 40 (80 mm) made windows of 288-320 mm on the three Sunnybrook series (their grid: 352 mm), within
#: the 224-320 mm fields the model was trained on. Against the whole grid (figures in the `Segmenter`
#: docstring): Sunnybrook volumes within 0.1 mL.
HEART_WINDOW_MARGIN = 40
MIN_HEART_WINDOW_MARGIN = 16
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash, no controls


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(value):
        raise ValueError("an AE title is 1-16 printable characters without backslash")
    return stripped


class CallerRule(BaseModel):
    """One allowed calling AE title, optionally only from one host address."""

    model_config = ConfigDict(frozen=True)

    ae_title: str
    host: str | None = None

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae_title(value)

    @staticmethod
    def fields(text: str) -> dict[str, str | None]:
        """Split ``AE`` or ``AE@host`` into this model's fields, without validating them."""
        title, _, host = text.strip().partition("@")
        return {"ae_title": title, "host": host.strip() or None}

    @classmethod
    def parse(cls, text: str) -> CallerRule:
        """Parse ``AE`` or ``AE@host``."""
        return cls.model_validate(cls.fields(text))

    def allows(self, ae_title: str, address: str) -> bool:
        """Whether this rule admits a caller."""
        return ae_title.strip() == self.ae_title and (self.host is None or self.host == address)


class DicomSettings(BaseModel):
    """The DICOM listener (``[dicom]``)."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str = "DICOMNODE"
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=1, le=65535)
    allowed_callers: Annotated[list[CallerRule], NoDecode] = Field(default_factory=list)
    max_associations: int = Field(default=32, ge=1, le=1000)
    max_pdu_size: int = Field(
        default=262144, ge=0, description="largest PDU the node accepts; 0 means no limit"
    )
    network_timeout_s: float = Field(default=60.0, gt=0)
    acse_timeout_s: float = Field(default=30.0, gt=0)
    dimse_timeout_s: float = Field(default=60.0, gt=0)
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    request_deadline_s: float = Field(
        default=10.0,
        gt=0,
        description="a connection must deliver its whole A-ASSOCIATE-RQ within this many seconds "
        "(however slowly it trickles), or it is closed",
    )
    max_pending_connections: int = Field(
        default=64,
        ge=1,
        description="connections that have not yet sent their A-ASSOCIATE-RQ; more are closed at once",
    )
    max_pending_per_address: int = Field(
        default=16,
        ge=1,
        description="such connections from one address; more from it are closed at once (keep it above "
        "max_associations_per_caller: a PACS opens its associations at once)",
    )
    max_associations_per_caller: int = Field(
        default=8, ge=1, le=1000, description="concurrent associations one calling AE title may hold"
    )
    max_instance_mb: int = Field(
        default=1024, ge=1, description="largest instance accepted; a bigger one aborts the association"
    )
    max_inflight_mb: int = Field(
        default=512,
        ge=1,
        description="received instance data not yet stored, all associations together; beyond it "
        "reads wait (the oldest instance always proceeds)",
    )
    receiver_processes: int = Field(
        default=0,
        ge=0,
        le=32,
        description="listener processes sharing the port (SO_REUSEPORT) and the index; 0: the number "
        "of cores, at most 4. Association limits hold across them; max_inflight_mb is split evenly",
    )
    tls_cert: Path | None = Field(default=None, description="PEM certificate: serve DICOM TLS")
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert")
    tls_ca: Path | None = Field(
        default=None, description="PEM CA bundle trusted for peers' certificates (in and out)"
    )
    tls_require_client_cert: bool = Field(
        default=True, description="with TLS, refuse callers without a certificate signed by tls_ca"
    )

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae_title(value)

    @model_validator(mode="after")
    def _tls(self) -> DicomSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key are set together")
        if self.tls_cert is not None and self.tls_require_client_cert and self.tls_ca is None:
            raise ValueError("tls_require_client_cert needs tls_ca (or set it to false)")
        return self

    @property
    def tls(self) -> bool:
        """Whether the listener serves DICOM TLS."""
        return self.tls_cert is not None

    @field_validator("allowed_callers", mode="before")
    @classmethod
    def _callers(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                value = json.loads(text)
            else:
                value = [part for part in text.split(",") if part.strip()]
        if isinstance(value, list):
            # Fields, not models: pydantic then validates each item and reports it at its list index.
            return [CallerRule.fields(item) if isinstance(item, str) else item for item in value]
        return value


class StorageSettings(BaseModel):
    """Spool and index (``[storage]``)."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Path("./dicomnode-data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file inside data_dir"
    )
    min_free_mb: int = Field(default=1024, ge=0)
    max_instances_per_study: int = Field(
        default=50000, ge=1, description="instances one study may hold; more are refused (0xA700)"
    )
    claim_lease_seconds: float = Field(
        default=120.0,
        ge=10,
        description="how long a node's claim on a job or delivery holds unless renewed; "
        "any node takes over a claim whose lease ran out",
    )

    @field_validator("database_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite:", "postgresql")):
            raise ValueError("expected a sqlite:/// or postgresql+psycopg:// URL")
        return value

    def effective_database_url(self) -> str:
        """The configured URL, or the SQLite file inside the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"


class InferenceSettings(BaseModel):
    """The model and ONNX Runtime (``[inference]``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_dir: Path = Field(
        default_factory=lambda: Path(__file__).resolve().parents[1] / "models",
        description="folder of released models (.onnx + card .json); default: the shipped one",
    )
    model_name: str = "lvseg-unet"
    model_version: str | None = None
    providers: Annotated[list[str], NoDecode] | None = Field(
        default=None, description="ONNX Runtime providers; default CUDA when available, else CPU"
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="threads per ONNX Runtime run; 0: cores / parallel batches (CPU, one batch: ORT's)",
    )
    parallel_batches: int = Field(
        default=0, ge=0, le=64, description="batches of a stack run at once; 0: one per core (on CUDA too)"
    )
    batch_size: int = Field(default=8, ge=1, le=512)
    basal_rule: BasalRule = Field(
        default=BasalRule.PER_PHASE,
        description="which basal frames count: per_phase (SCMR 2020, each phase on its own) or "
        "every_phase (a basal slice only where it is ventricle in every phase)",
    )
    heart_window_margin: int = Field(
        default=HEART_WINDOW_MARGIN,
        ge=0,
        le=512,
        description="run each stack on a window around the heart, this many model pixels wider than "
        f"the LV on every side (0: the whole grid; otherwise at least {MIN_HEART_WINDOW_MARGIN})",
    )

    @field_validator("providers", mode="before")
    @classmethod
    def _providers(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()] or None
        return value

    @field_validator("heart_window_margin")
    @classmethod
    def _heart_window_margin(cls, value: int) -> int:
        if 0 < value < MIN_HEART_WINDOW_MARGIN:
            raise ValueError(f"expected 0 (whole grid) or at least {MIN_HEART_WINDOW_MARGIN}")
        return value


class PipelineSettings(BaseModel):
    """Study readiness and workers (``[pipeline]``)."""

    model_config = ConfigDict(extra="forbid")

    stable_seconds: float = Field(default=10.0, gt=0)
    max_wait_seconds: float = Field(default=600.0, gt=0)
    workers: int = Field(default=1, ge=1, le=64)
    poll_seconds: float = Field(default=1.0, gt=0)
    retry_seconds: float = Field(
        default=60.0,
        ge=0,
        description="wait before a job whose attempt failed (or whose process died) is tried again",
    )
    max_queued_studies: int = Field(
        default=200,
        ge=1,
        description="studies waiting for inference; beyond it new studies are refused (0xA700)",
    )


def _sends() -> Any:
    """A destination's ``send``: what it receives."""
    return Field(
        default=frozenset(ReportObject),
        min_length=1,
        description='what this destination receives, any of "sr", "sc", "seg" (default: all of them)',
    )


class Destination(BaseModel):
    """A DICOM peer the node sends results to (usually the PACS)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = Field(
        default=False,
        description="DICOM TLS: verify the peer against dicom.tls_ca, present dicom.tls_cert",
    )
    send: frozenset[ReportObject] = _sends()

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae_title(value)

    @property
    def key(self) -> str:
        """``AE@host:port``: how the destination is named in the delivery records."""
        return f"{self.ae_title}@{self.host}:{self.port}"


class DicomwebDestination(BaseModel):
    """A DICOMweb origin server the node sends results to by STOW-RS (PS3.18 10.5).

    Credentials are read from files (at each send, so a rotated token is taken up without a
    restart), never from the environment: ``token_file`` holds a bearer token, ``basic_auth_file``
    one line ``user:password``. An https server is verified against ``ca``, else ``dicom.tls_ca``,
    else the system's CAs.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dicomweb: str = Field(description="the service's base URL, e.g. https://archive.example/dicom-web")
    token_file: Path | None = Field(default=None, description="file holding a bearer token")
    basic_auth_file: Path | None = Field(default=None, description="file holding one line user:password")
    ca: Path | None = Field(default=None, description="PEM CA bundle verifying the server (https)")
    timeout_s: float | None = Field(default=None, gt=0, description="default: delivery.timeout_s")
    send: frozenset[ReportObject] = _sends()

    @field_validator("dicomweb")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("a base URL has no query or fragment")
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _credentials(self) -> DicomwebDestination:
        if self.token_file is not None and self.basic_auth_file is not None:
            raise ValueError("token_file and basic_auth_file are alternatives: set one")
        if self.ca is not None and not self.dicomweb.startswith("https:"):
            raise ValueError("ca verifies an https server; the URL is http")
        return self

    @property
    def key(self) -> str:
        """The base URL: how the destination is named in the delivery records."""
        return self.dicomweb

    @property
    def credential_files(self) -> list[Path]:
        """The files this destination reads its credentials from."""
        return [path for path in (self.token_file, self.basic_auth_file) if path is not None]


#: The tags of :data:`AnyDestination`'s members.
DESTINATION_KINDS = ("dimse", "dicomweb")


def _destination_kind(value: Any) -> str:
    if isinstance(value, DicomwebDestination) or (isinstance(value, dict) and "dicomweb" in value):
        return "dicomweb"
    return "dimse"


#: A delivery destination: a DICOM peer (C-STORE) or a DICOMweb server (STOW-RS), told apart by the
#: ``dicomweb`` key.
AnyDestination = Annotated[
    Annotated[Destination, Tag("dimse")] | Annotated[DicomwebDestination, Tag("dicomweb")],
    Discriminator(_destination_kind),
]


class DeliverySettings(BaseModel):
    """Sending results (``[delivery]``)."""

    model_config = ConfigDict(extra="forbid")

    destinations: list[AnyDestination] = Field(default_factory=list)
    calling_ae_title: str | None = Field(default=None, description="default: the node's AE title")
    max_attempts: int = Field(default=10, ge=1)
    backoff_initial_s: float = Field(default=5.0, gt=0)
    backoff_max_s: float = Field(default=900.0, gt=0)
    batch_size: int = Field(default=50, ge=1)
    poll_seconds: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=30.0, gt=0)
    dead_letter_probe_s: float = Field(
        default=60.0,
        gt=0,
        description="how often a destination holding dead letters is sent C-ECHO; "
        "when it answers, its dead letters (other than refused objects) are sent again",
    )

    def backoff(self, attempts: int) -> float:
        """Seconds before retry number ``attempts`` + 1: exponential, capped."""
        return float(min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(0, attempts - 1)))


class ReportSettings(BaseModel):
    """What the node sends back (``[reports]``)."""

    model_config = ConfigDict(extra="forbid")

    send_seg: bool = Field(default=False, description="also send a DICOM SEG of the LV masks")


class LoggingSettings(BaseModel):
    """Log output (``[logging]``)."""

    model_config = ConfigDict(extra="forbid")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"
    pynetdicom_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"

    @field_validator("level", "pynetdicom_level", "format", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        """``debug`` is ``DEBUG`` (and ``JSON`` is ``json``): case carries no meaning here."""
        if not isinstance(value, str):
            return value
        return value.lower() if value.lower() in ("auto", "json", "console") else value.upper()


class WebSettings(BaseModel):
    """The review worklist web app (``[web]``).

    ``trusted_user_header`` names a request header (e.g. ``X-Remote-User``) carrying the user name
    an authenticating reverse proxy has already verified; it is honoured only on requests from
    ``trusted_proxies`` and only for an existing, enabled user. Off (None) by default: never set it
    unless every request reaches the node through that proxy.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535, description="0 picks a free port")
    secure_cookies: bool = Field(default=False, description="set the Secure cookie flag (behind TLS)")
    session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    trusted_user_header: str | None = None
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["127.0.0.1"])
    stow_max_request_mb: int = Field(
        default=2048,
        ge=1,
        description="largest STOW-RS request body (POST /dicomweb/studies); one with a bigger "
        "Content-Length is refused (413) before anything of it is stored",
    )
    stow_max_requests: int = Field(
        default=4,
        ge=1,
        le=64,
        description="STOW-RS bodies read at once (more wait); each holds at most one instance in memory",
    )

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class AuthSettings(BaseModel):
    """Logins (``[auth]``): back-off after failed passwords, per user name and per address.

    After ``free_failures`` consecutive failures, each further failure blocks the next attempt for
    ``backoff_initial_s`` x 2^(n-1) seconds (capped at ``backoff_max_s``); a success clears the
    user's count, and a count is forgotten ``reset_after_s`` after its last failure.
    """

    model_config = ConfigDict(extra="forbid")

    free_failures: int = Field(default=3, ge=0)
    backoff_initial_s: float = Field(default=2.0, gt=0)
    backoff_max_s: float = Field(default=900.0, gt=0)
    reset_after_s: float = Field(default=3600.0, gt=0)
    min_password_chars: int = Field(default=12, ge=1)

    def backoff(self, failures: int) -> float:
        """Seconds the next attempt is blocked after ``failures`` consecutive failures."""
        over = failures - self.free_failures
        if over <= 0:
            return 0.0
        return float(min(self.backoff_max_s, self.backoff_initial_s * 2 ** (over - 1)))


class Settings(BaseSettings):
    """All of the node's settings, one object passed to constructors."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    dicom: DicomSettings = Field(default_factory=DicomSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    reports: ReportSettings = Field(default_factory=ReportSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)


def _env_name(location: tuple[int | str, ...]) -> str:
    """The variable that sets a value; inside a list (one variable holds it all) the item and field
    follow it, e.g. ``DICOMNODE_DELIVERY__DESTINATIONS[0].port``."""
    names: list[str] = []
    rest = ""
    for index, part in enumerate(location):
        if isinstance(part, int):
            rest = f"[{part}]" + "".join(
                f"[{item}]" if isinstance(item, int) else f".{item}" for item in location[index + 1 :]
            )
            break
        names.append(str(part))
    return ENV_PREFIX + "__".join(name.upper() for name in names) + rest


def setting_variables(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> dict[str, FieldInfo]:
    """Every setting's environment variable and its field (sections descended into)."""
    found: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.update(setting_variables(annotation, path))
        else:
            found[ENV_PREFIX + "__".join(part.upper() for part in path)] = field
    return found


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each ``DICOMNODE_*`` variable that is no setting (they are otherwise ignored),
    with the closest setting's name, e.g. ``DICOMNODE_DICOM_PORT`` for ``DICOMNODE_DICOM__PORT``."""
    known = set(setting_variables(Settings)) | {CONFIG_ENV, FAILPOINT_ENV}  # crash tests' switch
    warnings = []
    for name in sorted(environ if environ is not None else os.environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.8)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"{name} is not a setting and is ignored (sections and keys join with __){hint}")
    return warnings


def _in_toml(document: Mapping[str, Any], location: tuple[int | str, ...]) -> bool:
    """Whether the TOML document sets the value at ``location`` (down to a list, which it sets whole)."""
    node: Any = document
    for part in location:
        if isinstance(part, int) or not isinstance(node, Mapping) or part not in node:
            return isinstance(part, int)
        node = node[part]
    return True


def _toml_name(path: Path, location: tuple[int | str, ...]) -> str:
    """``file.toml: [section] key`` for a value set in the TOML file."""
    keys = [str(part) for part in location if not isinstance(part, int)]
    section, key = (keys[:-1], keys[-1]) if len(keys) > 1 else ([], keys[0] if keys else "")
    return f"{path}: " + (f"[{'.'.join(section)}] " if section else "") + key


def _unparseable_variable(error: Exception) -> str:
    """The line for a ``DICOMNODE_*`` value that is not the JSON its setting needs (pydantic-settings
    names only the section), else the error as it is."""
    fields = setting_variables(Settings)
    for name, value in sorted(os.environ.items()):
        field = fields.get(name.upper())
        if field is None or not _is_structured(field.annotation):
            continue
        try:
            json.loads(value)
        except json.JSONDecodeError as problem:
            return (
                f"{name}: not valid JSON ({problem.msg} at character {problem.pos}); "
                "it takes a JSON list or object"
            )
    return f"{ENV_PREFIX}*: {error}"


def _is_structured(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in (list, tuple, dict, set, frozenset):
        return True
    if origin is not None:  # Union / Optional / Annotated: structured if any member is
        return any(_is_structured(arg) for arg in get_args(annotation) if arg is not type(None))
    return isinstance(annotation, type) and issubclass(annotation, (BaseModel, list, tuple, dict))


def load_settings(config_file: Path | None = None) -> Settings:
    """Load settings once: defaults < TOML file < environment.

    Raises
    ------
    ConfigError
        One line per invalid key, naming it as its environment variable.
    """
    path = config_file or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if path is not None and not path.is_file():
        raise ConfigError(f"{'--config' if config_file else CONFIG_ENV}: config file not found: {path}")
    document: dict[str, Any] = {}
    if path is not None:
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
            if path is not None:
                sources += (TomlConfigSettingsSource(settings_cls, toml_file=path),)
            return sources

    try:
        loaded = _Loaded()
    except ValidationError as error:
        environ = {name.upper() for name in os.environ}
        lines = []
        for item in error.errors():
            # A tagged union (a destination: dimse | dicomweb) adds its tag after the list index.
            raw = tuple(item["loc"])
            location = tuple(
                part
                for number, part in enumerate(raw)
                if not (part in DESTINATION_KINDS and number and isinstance(raw[number - 1], int))
            )
            variable = _env_name(location)
            from_file = (
                path is not None and variable.split("[")[0] not in environ and _in_toml(document, location)
            )
            name = _toml_name(path, location) if from_file and path is not None else variable
            if item["type"] == "extra_forbidden":
                lines.append(f"{name}: no such setting")
            else:
                lines.append(f"{name}: {item['msg']}")
        raise ConfigError("\n".join(lines)) from None
    except ValueError as error:  # JSON that does not parse in an environment value
        raise ConfigError(_unparseable_variable(error)) from None
    return loaded
