"""Gateway settings: environment variables prefixed ``METERPOORT_`` (and ``DATABASE_URL``),
optionally from a ``.env`` file in the working directory.

Build one ``Settings`` in the entry point (``gateway.cli``) and pass it down; nothing reads the
environment at import time.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting of the gateway, with its default."""

    model_config = SettingsConfigDict(
        env_prefix="METERPOORT_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    #: PostgreSQL ≥ 14 to use; unset → an embedded server with its data under ``data_dir``.
    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "METERPOORT_DATABASE_URL", "database_url"),
    )
    #: where the embedded PostgreSQL (``<data_dir>/pg``) and local keys live
    data_dir: Path = Path("./var")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    #: bearer token for ``/v1/admin/*``; unset → the admin API refuses every request
    admin_token: SecretStr | None = None
    #: trust the local dev key for customer tokens (never in production)
    dev_mode: bool = False
    #: CSP ``frame-ancestors`` of ``/portal``: the origins allowed to embed the customer portal
    #: (the supplier's own portal), e.g. "'self' https://mijn.supplier.example"
    portal_frame_ancestors: str = "'self'"
    #: request body limit (bytes); telegram batches are the largest legitimate bodies
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    log_level: str = "INFO"
    #: database pool size per process
    pool_min_size: int = Field(default=2, ge=0)
    pool_max_size: int = Field(default=10, ge=1)
    #: seconds a request waits for a pooled connection before answering 503
    pool_acquire_timeout_s: float = Field(default=5.0, gt=0)
    #: Retry-After (seconds) sent with 503 answers
    retry_after_s: int = Field(default=5, ge=1)
    #: seconds to let in-flight requests and batches finish on SIGTERM
    shutdown_timeout_s: float = Field(default=10.0, ge=0)
    ingest_batch_max_delay_ms: int = Field(default=5, ge=0)
    ingest_batch_max_rows: int = Field(default=5000, ge=1)
    #: readings measured more than this many seconds ahead of the server clock are rejected
    future_tolerance_s: int = Field(default=300, ge=0)
    #: readings older than this are rejected (matches the field device's spool horizon)
    spool_horizon_days: int = Field(default=40, ge=1)
    tz: str = "Europe/Amsterdam"
    #: months of reading partitions created ahead of now
    partitions_ahead_months: int = Field(default=2, ge=1)
    #: customer tokens: the identity provider's ``iss`` (required once its keys are configured)
    customer_jwt_issuer: str | None = None
    #: customer tokens: the ``aud`` they must carry
    customer_jwt_audience: str = "meterpoort"
    #: customer tokens: PEM public-key files, Ed25519 or EC P-256 (env: a JSON list)
    customer_jwt_keys: list[Path] = Field(default_factory=list)
    #: customer tokens: a JWKS file and/or URL (the URL is fetched over HTTP and cached)
    customer_jwks_file: Path | None = None
    customer_jwks_url: str | None = None
    customer_jwks_cache_s: float = Field(default=300.0, gt=0)
    #: receipt/webhook Ed25519 signing key (PKCS#8 PEM); unset → ``<data_dir>/signing-key.pem``
    signing_key_file: Path | None = None
    #: the PII controller named in consent receipts (Kantara ``piiControllers``)
    controller_name: str = "Meterpoort energy supplier"
    controller_contact: str = "Privacy officer"
    controller_address: str = "Netherlands"
    controller_email: str = "privacy@example.nl"
    controller_phone: str | None = None
    privacy_policy_url: str = "https://example.nl/privacy"
    receipt_language: str = "nl"
    #: the gateway's external base URL; receipts point at ``<base>/v1/keys#<kid>``
    public_base_url: str | None = None
    #: longest a consent may run (SPEC §4: configurable, default 3 years); a consent given
    #: without ``expires_at`` expires after this
    consent_max_lifetime_days: int = Field(default=1096, ge=1)

    def database_dsn(self) -> str | None:
        """The configured PostgreSQL URL in clear, or None for the embedded server."""
        return None if self.database_url is None else self.database_url.get_secret_value()
