"""Settings, read from the environment and `.env`, validated once at start.

A bad value raises `ConfigError`, whose message names the variable; `cli` prints it and exits.
Secrets are `SecretStr`, so they never show in a repr, a log line or an error message.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Durations: finite (inf and nan would overflow date arithmetic later), fractions allowed.
PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def is_sqlite_url(url: str) -> bool:
    """Whether a database URL names SQLite: `sqlite:///PATH`, or with a driver, `sqlite+aiosqlite:///PATH`.

    The backend is the scheme before any `+driver`, as SQLAlchemy's `URL.get_backend_name()` reads it.
    """
    scheme, sep, _ = url.partition(":")
    return bool(sep) and scheme.partition("+")[0].strip().lower() == "sqlite"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the variable(s)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=True, env_ignore_empty=True
    )

    akool_api_key: SecretStr | None = Field(default=None, alias="AKOOL_API_KEY")
    akool_client_id: str | None = Field(default=None, alias="AKOOL_CLIENT_ID")
    akool_client_secret: SecretStr | None = Field(default=None, alias="AKOOL_CLIENT_SECRET")
    akool_base_url: str = Field(default="https://openapi.akool.com", alias="AKOOL_BASE_URL")
    # The relay as Akool reaches it; jobs created through the relay get RELAY_PUBLIC_URL/akool/webhook.
    public_url: str | None = Field(default=None, alias="RELAY_PUBLIC_URL")

    database_url: str = Field(
        default="sqlite:///./akool-relay.db", alias="DATABASE_URL", repr=False
    )  # may hold a password
    database_pool_size: int = Field(default=10, ge=1, le=200, alias="RELAY_DB_POOL_SIZE")
    database_max_overflow: int = Field(default=10, ge=0, le=200, alias="RELAY_DB_MAX_OVERFLOW")

    host: str = Field(default="127.0.0.1", alias="RELAY_HOST")
    port: int = Field(default=8000, ge=0, le=65535, alias="RELAY_PORT")

    api_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list, alias="RELAY_API_TOKENS")
    admin_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, alias="RELAY_ADMIN_TOKENS"
    )
    webhook_secret: SecretStr | None = Field(default=None, alias="RELAY_WEBHOOK_SECRET")
    allow_private_callbacks: bool = Field(default=False, alias="RELAY_ALLOW_PRIVATE_CALLBACKS")

    poll_interval_min: PositiveSeconds = Field(default=5.0, alias="RELAY_POLL_INTERVAL_MIN")
    poll_interval_max: PositiveSeconds = Field(default=60.0, alias="RELAY_POLL_INTERVAL_MAX")
    poll_concurrency: int = Field(default=32, ge=1, le=1000, alias="RELAY_POLL_CONCURRENCY")
    akool_rate_limit: PositiveSeconds = Field(default=20.0, alias="RELAY_AKOOL_RATE_LIMIT")
    throttle_cooldown: PositiveSeconds = Field(default=30.0, alias="RELAY_THROTTLE_COOLDOWN")
    akool_timeout: PositiveSeconds = Field(default=10.0, alias="RELAY_AKOOL_TIMEOUT")
    job_timeout: PositiveSeconds = Field(default=86400.0, alias="RELAY_JOB_TIMEOUT")
    not_found_grace: Seconds = Field(default=60.0, alias="RELAY_NOT_FOUND_GRACE")
    delivery_timeout: PositiveSeconds = Field(default=15.0, alias="RELAY_DELIVERY_TIMEOUT")
    retry_schedule: Annotated[list[Seconds], NoDecode] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        alias="RELAY_RETRY_SCHEDULE",
    )
    # How often the loops tick. The database says what is due; the tick only asks.
    tick_interval: PositiveSeconds = Field(default=1.0, alias="RELAY_TICK_INTERVAL")
    lease_seconds: PositiveSeconds = Field(default=60.0, alias="RELAY_LEASE_SECONDS")
    # Finished jobs with every delivery settled are deleted this long after they finished (with their
    # transitions, events and attempts); 0 keeps everything. Days, fractions allowed (tests use 1e-5).
    retention_days: float = Field(
        default=90.0, ge=0, le=36500, allow_inf_nan=False, alias="RELAY_RETENTION_DAYS"
    )
    # text: "time LEVEL logger: message"; json: one object per line (app.logs).
    log_format: Literal["text", "json"] = Field(default="text", alias="RELAY_LOG_FORMAT")

    @field_validator("api_tokens", "admin_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _split_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            if not parts:
                raise ValueError("needs at least one delay, e.g. 5,300,1800")
            return parts
        return value

    @field_validator("retry_schedule")
    @classmethod
    def _positive_delays(cls, value: list[float]) -> list[float]:
        if any(d < 0 for d in value):
            raise ValueError("delays must be >= 0 seconds")
        return value

    @field_validator("akool_base_url", "public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgres")):
            raise ValueError("must be sqlite:///PATH or postgresql://user:pass@host:port/db")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("whsec_"):
            raise ValueError("must be a Standard Webhooks secret starting with whsec_")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.poll_interval_max < self.poll_interval_min:
            raise ValueError("RELAY_POLL_INTERVAL_MAX must be >= RELAY_POLL_INTERVAL_MIN")
        if self.akool_client_secret and not self.akool_client_id:
            raise ValueError("AKOOL_CLIENT_SECRET needs AKOOL_CLIENT_ID")
        if self.akool_client_id and not (self.akool_client_secret or self.akool_api_key):
            # Beside AKOOL_API_KEY alone it only serves pushes: the key *is* the client secret.
            raise ValueError("AKOOL_CLIENT_ID needs AKOOL_CLIENT_SECRET (token auth) or AKOOL_API_KEY")
        return self

    @property
    def uses_token(self) -> bool:
        """getToken with the client id and secret; else the API key goes as x-api-key."""
        return self.akool_client_secret is not None

    @property
    def push_credentials(self) -> tuple[str, str] | None:
        """(client id, client secret) that Akool's pushes are signed and encrypted with, when known."""
        secret = self.akool_client_secret or self.akool_api_key
        if self.akool_client_id is None or secret is None:
            return None
        return self.akool_client_id, secret.get_secret_value()

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite_url(self.database_url)

    @property
    def api_token_values(self) -> list[str]:
        return [t.get_secret_value() for t in self.api_tokens]

    @property
    def admin_token_values(self) -> list[str]:
        return [t.get_secret_value() for t in self.admin_tokens]


def load_settings(**overrides: object) -> Settings:
    """Build Settings from the environment (and overrides), or raise ConfigError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        fields = Settings.model_fields
        problems = []
        for err in exc.errors():
            loc = err["loc"][0] if err["loc"] else ""
            field = fields.get(str(loc))
            name = field.alias if field is not None and field.alias else str(loc) or "configuration"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{name}: {msg}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
