"""Every setting of every process, read one way: `load_settings()` at start-up.

Values come from `config.yml` (every setting with its default) and the
environment (same names; it wins), are checked together by pydantic (types,
bounds, the rules between settings), and a bad one stops the process with a
message naming the variable. Code below the entry points (domain rules,
storage, extensions) is handed what it needs; nothing else reads
`os.environ`.

Why pydantic: typed fields with bounds and cross-field rules, and errors that
name each bad field, without writing our own parser.
"""
import os
from decimal import Decimal
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote

import yaml
from cryptography.fernet import Fernet
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE_VARIABLE = "CONFIG_FILE"
# The default secret `make run` prints; ENV=production refuses to start with it.
DEVELOPMENT_JWT_SECRET = "dev-only-insecure-jwt-secret-change-me"
# Likewise for the key webhook secrets are encrypted with (a Fernet key: base64 of 32 bytes).
DEVELOPMENT_WEBHOOK_SECRET_KEY = "ZGV2LW9ubHktaW5zZWN1cmUtd2ViaG9vay1rZXktMzI="
# Likewise for the key every process signs the caller context of its RPCs with (common/contract/caller.py).
DEVELOPMENT_CALLER_SIGNING_KEY = "dev-only-insecure-caller-signing-key-change-me"
# Where services find the Settings object inside nameko's config dict.
SETTINGS_KEY = "SETTINGS"
# Never echoed in an error message.
SECRET_VARIABLES = {"JWT_SECRET", "CALLER_SIGNING_KEY", "DATABASE_URL", "AMQP_URI", "SMTP_PASSWORD", "REDIS_URL", "WEBHOOK_SECRET_KEY",
                    "SMS_AUTH_TOKEN", "VAPID_PRIVATE_KEY"}
# Where mail goes when SMTP_HOST is unset: the sink `make run` starts (scripts/mail_sink.py).
LOCAL_MAIL_SINK_HOST = "127.0.0.1"
# Where SMS go when SMS_API_URL is unset: the sink `make run` starts (scripts/sms_sink.py).
LOCAL_SMS_SINK = "http://127.0.0.1:{port}"

MIN_SIGNING_KEY_LENGTH = 16  # characters of CALLER_SIGNING_KEY (each, when rotating)

PositiveSeconds = Annotated[float, Field(gt=0)]


class SettingsError(Exception):
    """A setting is missing or invalid; the message names each bad variable."""


class Settings(BaseModel):
    """Field names are the variables' names in lower case; `config.yml` and the
    environment use the upper-case names (the aliases)."""
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=str.upper, populate_by_name=True)

    amqp_uri: str = Field(min_length=1)
    amqp_quorum_queues: bool
    database_url: str = Field(min_length=1)

    gateway_host: str = Field(min_length=1)
    gateway_port: int = Field(ge=1, le=65535)
    gateway_workers: int = Field(ge=1, le=64)
    gateway_threads: int = Field(ge=1, le=256)
    gateway_keepalive_seconds: int = Field(ge=1, le=3600)
    batch_max: int = Field(ge=1, le=1000)
    batch_in_flight: int = Field(ge=1, le=64)
    rpc_pool_size_setting: int | None = Field(default=None, ge=1, le=1024, alias="RPC_POOL_SIZE")
    jwt_secret: str = Field(min_length=1)
    # One key, or several separated by commas to rotate one: the first signs, every one is accepted.
    caller_signing_key: SecretStr
    caller_signature_max_age_seconds: float = Field(gt=0, le=3600)
    env: Literal["development", "production"]

    rpc_timeout: PositiveSeconds
    service_rpc_timeout: PositiveSeconds

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    otel_exporter_otlp_endpoint: str | None = Field(default=None, pattern=r"^https?://")
    otel_traces_sampler: Literal["always_on", "always_off", "traceidratio", "parentbased_always_on",
                                 "parentbased_always_off", "parentbased_traceidratio"]
    otel_traces_sampler_arg: float = Field(ge=0, le=1)
    otel_service_name: str | None = Field(default=None, min_length=1, max_length=255)
    otel_resource_attributes: dict[str, str] = Field(default_factory=dict)
    metrics_port: int = Field(ge=0, le=65000)

    max_workers: int = Field(ge=1, le=1000)
    outbox_relay_interval: PositiveSeconds
    outbox_gather_seconds: float = Field(ge=0, le=5)
    outbox_retention_hours: float = Field(gt=0)
    event_dedup_retention_hours: float = Field(gt=0)
    event_max_retries: int = Field(ge=0, le=100)
    event_retry_base_seconds: PositiveSeconds
    consumer_batch_max: int = Field(ge=1, le=1000)

    reconcile_interval_seconds: PositiveSeconds
    reservation_grace_seconds: PositiveSeconds
    order_create_deadline_seconds: PositiveSeconds
    idempotency_retention_hours: float = Field(gt=0)
    idempotency_prune_interval_seconds: PositiveSeconds

    # Invoices: prices include tax; the seller is copied into each invoice when it is issued.
    tax_rate: Decimal = Field(ge=0, lt=1, decimal_places=4)
    seller_name: str = Field(min_length=1, max_length=200)
    seller_address: str = Field(min_length=1, max_length=500)
    seller_tax_id: str = Field(min_length=1, max_length=50)
    smtp_host: str | None = Field(default=None, min_length=1, max_length=253)
    smtp_port: int = Field(ge=1, le=65535)
    smtp_starttls: bool
    smtp_username: str | None = Field(default=None, min_length=1, max_length=254)
    smtp_password: SecretStr | None = Field(default=None, min_length=1)
    smtp_timeout_seconds: float = Field(gt=0, le=300)
    mail_from: str = Field(min_length=3, max_length=300)
    mail_sink_port: int = Field(ge=1, le=65535)
    notify_retry_base_seconds: float = Field(gt=0, le=300)
    notify_max_attempts: int = Field(ge=1, le=100)
    notify_sweep_interval_seconds: float = Field(gt=0, le=300)
    staff_emails: tuple[str, ...] = ()
    notify_http_timeout_seconds: float = Field(gt=0, le=300)
    sms_api_url: str | None = Field(default=None, pattern=r"^https?://[^/]+(/.*)?$", max_length=500)
    sms_account_sid: str = Field(min_length=1, max_length=100)
    sms_auth_token: SecretStr = Field(min_length=1)
    sms_from: str = Field(min_length=1, max_length=40)
    sms_sink_port: int = Field(ge=1, le=65535)
    vapid_private_key: str | None = Field(default=None, min_length=1)
    vapid_subject: str | None = Field(default=None, pattern=r"^(mailto:|https://)")
    webhook_allow_hosts: tuple[str, ...] = ()

    # The edge (gateway/edge/): rate limits, CORS, load shedding, circuit breakers, API keys.
    rate_limit: str | None = Field(default=None, min_length=1, max_length=100)
    redis_url: str | None = Field(default=None, pattern=r"^(redis|rediss|unix)://")
    gateway_max_in_flight: int = Field(ge=1, le=100000)
    breaker_failures: int = Field(ge=1, le=1000)
    breaker_reset_seconds: float = Field(gt=0, le=3600)
    cors_origins: tuple[str, ...] = ()
    api_key_cache_seconds: float = Field(gt=0, le=300)
    # Webhooks (webhook_service). The key: one Fernet key, or several separated by commas (the first
    # encrypts, every one decrypts: how a key is rotated).
    webhook_secret_key: SecretStr
    webhook_timeout_seconds: float = Field(gt=0, le=60)
    webhook_retry_base_seconds: float = Field(gt=0, le=3600)
    webhook_max_attempts: int = Field(ge=1, le=100)
    webhook_disable_after_hours: float = Field(gt=0)
    webhook_allow_hosts: tuple[str, ...] = ()
    webhook_sweep_interval_seconds: float = Field(gt=0, le=300)
    # At least a day: an event's dedup must outlive every late copy of it (see _rules_between_settings).
    webhook_retention_days: float = Field(ge=1)
    webhook_prune_interval_seconds: PositiveSeconds
    webhook_bindings_interval_seconds: PositiveSeconds
    webhook_unbind_grace_seconds: float = Field(ge=0)

    @field_validator("log_level", "env", mode="before")
    @classmethod
    def _case_insensitive(cls, value, info):
        if not isinstance(value, str):
            return value
        return value.upper() if info.field_name == "log_level" else value.lower()

    @field_validator("database_url")
    @classmethod
    def _psycopg2_driver(cls, value):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed.
        for bare in ("postgresql://", "postgres://"):
            if value.startswith(bare):
                return "postgresql+psycopg2://" + value[len(bare):]
        return value

    @field_validator("otel_resource_attributes", mode="before")
    @classmethod
    def _key_value_pairs(cls, value):
        """The OpenTelemetry SDK's format: key=value pairs separated by commas, values percent-encoded."""
        if value is None:
            return {}
        if not isinstance(value, str):
            return value
        pairs = {}
        for item in filter(str.strip, value.split(",")):
            key, equals, encoded = item.partition("=")
            if not equals or not key.strip():
                raise ValueError("must be key=value pairs separated by commas: deployment.environment=production")
            pairs[key.strip()] = unquote(encoded.strip())
        return pairs

    @field_validator("rate_limit")
    @classmethod
    def _a_limits_expression(cls, value):
        """One limit in the `limits` library's notation (600/minute, 10 per second)."""
        if value is None:
            return None
        from limits import parse_many

        try:
            one = len(parse_many(value)) == 1
        except ValueError:
            one = False
        if not one:
            raise ValueError("must be one limit such as 600/minute or 10/second")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        if value is None:
            return ()
        if isinstance(value, str):
            value = value.split(",")
        origins = tuple(origin.strip().rstrip("/") for origin in value if origin.strip())
        for origin in origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"origins are scheme://host[:port], comma-separated, or *: not {origin!r}")
        return origins

    @field_validator("webhook_allow_hosts", mode="before")
    @classmethod
    def _comma_separated_hosts(cls, value):
        if value is None:
            return ()
        if isinstance(value, str):
            value = value.split(",")
        return tuple(host.strip().lower().removeprefix("[").removesuffix("]") for host in value if host.strip())

    @field_validator("webhook_secret_key")
    @classmethod
    def _fernet_keys(cls, value):
        for key in value.get_secret_value().split(","):
            try:
                Fernet(key.strip())
            except ValueError:
                raise ValueError("must be Fernet keys (base64 of 32 random bytes), separated by commas: "
                                 "python -c 'from cryptography.fernet import Fernet; "
                                 "print(Fernet.generate_key().decode())'") from None
        return value

    @field_validator("caller_signing_key")
    @classmethod
    def _signing_keys(cls, value):
        keys = value.get_secret_value().split(",")
        if any(len(key.strip()) < MIN_SIGNING_KEY_LENGTH for key in keys):
            raise ValueError(f"each key (comma-separated) needs at least {MIN_SIGNING_KEY_LENGTH} characters: "
                             "openssl rand -base64 48")
        return value

    @field_validator("mail_from")
    @classmethod
    def _an_address(cls, value):
        if not _is_address(value):
            raise ValueError("must be an email address, optionally with a name: Shop <orders@shop.example>")
        return value

    @field_validator("staff_emails", mode="before")
    @classmethod
    def _addresses(cls, value):
        """Comma-separated addresses: stock@shop.example,Ops <ops@shop.example>."""
        if value is None:
            return ()
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        bad = [address for address in value if not _is_address(address)]
        if bad:
            raise ValueError(f"must be email addresses separated by commas; not one: {', '.join(bad)}")
        return tuple(value)

    @field_validator("webhook_allow_hosts", mode="before")
    @classmethod
    def _hosts(cls, value):
        """Comma-separated host names or addresses, compared case-insensitively."""
        if value is None:
            return ()
        if isinstance(value, str):
            value = value.split(",")
        return tuple(host.strip().lower() for host in value if host.strip())

    @model_validator(mode="after")
    def _rules_between_settings(self):
        problems = []
        if self.reservation_grace_seconds <= self.order_create_deadline_seconds:
            problems.append(
                f"RESERVATION_GRACE_SECONDS ({self.reservation_grace_seconds:g}) must exceed "
                f"ORDER_CREATE_DEADLINE_SECONDS ({self.order_create_deadline_seconds:g}): the reconciler "
                "would release the stock of orders still being created")
        retrying_seconds = self.event_retry_base_seconds * (2 ** self.event_max_retries - 1)
        if self.event_dedup_retention_hours * 3600 <= retrying_seconds:
            problems.append(
                f"EVENT_DEDUP_RETENTION_HOURS ({self.event_dedup_retention_hours:g}) must exceed the "
                f"{retrying_seconds:g} s an event can spend in retries (EVENT_MAX_RETRIES, EVENT_RETRY_BASE_SECONDS): "
                "a late copy of an event whose record was pruned would take effect again")
        if self.webhook_retention_days * 86400 <= retrying_seconds:
            problems.append(
                f"WEBHOOK_RETENTION_DAYS ({self.webhook_retention_days:g}) must exceed the {retrying_seconds:g} s "
                "an event can spend in retries (EVENT_MAX_RETRIES, EVENT_RETRY_BASE_SECONDS): a late copy of an "
                "event whose record was pruned would be delivered again")
        if self.service_rpc_timeout >= self.rpc_timeout:
            problems.append(
                f"SERVICE_RPC_TIMEOUT ({self.service_rpc_timeout:g}) must be below RPC_TIMEOUT "
                f"({self.rpc_timeout:g}): a service must give up on another before the gateway gives up on it")
        if (self.smtp_username is None) != (self.smtp_password is None):
            problems.append("SMTP_USERNAME and SMTP_PASSWORD: set both (to log in to the relay) or neither")
        if self.env == "production" and self.jwt_secret == DEVELOPMENT_JWT_SECRET:
            problems.append("JWT_SECRET: ENV=production refuses the development JWT_SECRET: "
                            "set a secret of your own")
        if self.env == "production" and DEVELOPMENT_CALLER_SIGNING_KEY.encode() in self.caller_signing_keys:
            problems.append("CALLER_SIGNING_KEY: ENV=production refuses the development CALLER_SIGNING_KEY: "
                            "set a key of your own")
        if self.caller_signature_max_age_seconds < self.rpc_timeout:
            problems.append(
                f"CALLER_SIGNATURE_MAX_AGE_SECONDS ({self.caller_signature_max_age_seconds:g}) must be at least "
                f"RPC_TIMEOUT ({self.rpc_timeout:g}): an order create signed at the gateway is checked up to "
                "its deadline later")
        if self.rate_limit and not self.redis_url:
            problems.append("RATE_LIMIT needs REDIS_URL: the counters are shared by every gateway process "
                            "(`make run` starts a local redis-server when REDIS_URL is unset)")
        if self.env == "production" and self.webhook_secret_key.get_secret_value() == DEVELOPMENT_WEBHOOK_SECRET_KEY:
            problems.append("WEBHOOK_SECRET_KEY: ENV=production refuses the development WEBHOOK_SECRET_KEY: "
                            "set a key of your own")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def caller_signing_keys(self):
        """The keys a caller signature is accepted with (bytes); the first one signs."""
        return tuple(key.strip().encode() for key in self.caller_signing_key.get_secret_value().split(","))

    @property
    def rpc_pool_size(self):
        return self.rpc_pool_size_setting or self.gateway_threads

    @property
    def sms_api_base(self):
        """The Messages API's base URL: SMS_API_URL, or the local sink when it is unset."""
        return (self.sms_api_url or LOCAL_SMS_SINK.format(port=self.sms_sink_port)).rstrip("/")

    @property
    def vapid_claim_subject(self):
        """The VAPID `sub` claim: VAPID_SUBJECT, else mailto: MAIL_FROM's address."""
        return self.vapid_subject or "mailto:" + parseaddr(self.mail_from)[1]

    @property
    def smtp_address(self):
        """(host, port) mail is sent to: SMTP_HOST:SMTP_PORT, or the local sink when SMTP_HOST is unset."""
        if self.smtp_host is None:
            return LOCAL_MAIL_SINK_HOST, self.mail_sink_port
        return self.smtp_host, self.smtp_port

    def nameko_config(self):
        """nameko's config dict for a service, the shell or a standalone proxy;
        the Settings object itself rides along under SETTINGS_KEY."""
        return {
            "AMQP_URI": self.amqp_uri,
            "serializer": "json",
            "rpc_exchange": "nameko-rpc",
            "max_workers": self.max_workers,
            "parent_calls_tracked": 10,
            SETTINGS_KEY: self,
        }

    @classmethod
    def variable_names(cls):
        return [field.alias for field in cls.model_fields.values()]


def _is_address(value):
    _, address = parseaddr(value)
    return "@" in address and not address.startswith("@") and not address.endswith("@")


def load_settings(environ=None, config_file=None):
    """The Settings of this process: `config_file` (default: CONFIG_FILE, else
    config.yml in the working directory, else the project's), overridden by
    `environ` (default: os.environ). SettingsError names every bad variable."""
    environ = os.environ if environ is None else environ
    path = Path(config_file or environ.get(CONFIG_FILE_VARIABLE) or _default_config_file())
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"{CONFIG_FILE_VARIABLE}: cannot read {path}: {exc}") from None
    if not isinstance(values, dict):
        raise SettingsError(f"{CONFIG_FILE_VARIABLE}: {path} must be a mapping of NAME: value")
    for name in Settings.variable_names():
        if environ.get(name, "") != "":  # an empty variable counts as unset
            values[name] = environ[name]
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, path)) from None


def settings_of(container):
    """The Settings a service container was started with (see nameko_config)."""
    return container.config[SETTINGS_KEY]


def _default_config_file():
    here = Path.cwd() / "config.yml"
    return here if here.exists() else PROJECT_ROOT / "config.yml"


def _describe(exc, path):
    lines = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if not name:
            lines.append(message)
            continue
        if error["type"] == "extra_forbidden":
            message = f"not a setting (in {path})"
        elif error["type"] == "missing":
            message = f"missing (set it in {path} or the environment)"
        elif name not in SECRET_VARIABLES:
            message += f" (got {error['input']!r})"
        lines.append(f"{name}: {message}")
    return "invalid configuration: " + "; ".join(lines)
