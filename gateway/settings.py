"""Gateway settings: environment variables prefixed ``METERPOORT_`` (and ``DATABASE_URL``),
optionally from a ``.env`` file in the working directory.

One ``Settings`` holds everything, with a nested model per background job: ``retention``
(``METERPOORT_RETENTION_<NAME>``) and ``webhook`` (``METERPOORT_WEBHOOK_<NAME>``). The entry point
(``gateway.cli``) builds it once and passes it down; ``create_app(settings)`` and everything
below read no environment, so tests build their settings explicitly.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    IPvAnyNetwork,
    SecretStr,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from consent.retention import RetentionPolicy


class RetentionSettings(BaseModel):
    """The retention job (environment ``METERPOORT_RETENTION_<NAME>``; SPEC §2 defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: run the hourly job in the gateway processes
    enabled: bool = True
    #: interval readings are kept this many years after receipt
    interval_years: int = Field(default=4, ge=1)
    #: daily/monthly readings are kept this many years after the contract ends
    daily_years: int = Field(default=7, ge=1)
    #: consent records outlive the interval data they justify by this many years
    consent_extra_years: int = Field(default=1, ge=0)
    #: consent-change notifications (outbox events and their webhook deliveries) are kept this
    #: many days once every delivery is delivered or given up. At least 14: the webhook worker
    #: looks back 7 days for expiries it has not announced yet, and finds that out from them.
    outbox_days: int = Field(default=30, ge=14)
    #: audit rows are removed this many years after they were recorded; unset (the default):
    #: never by this job. SPEC §2 keeps the trail as long as the data it justifies plus 1 year,
    #: and daily readings of an open contract are kept indefinitely, so no fixed age is right
    #: for every installation: the operator decides (8 = 7 fiscal years + 1 is the usual pick),
    #: or prunes by hand with `audit prune --before`.
    audit_years: int | None = Field(default=None, ge=1)
    #: rows per DELETE statement (each its own short transaction)
    batch_rows: int = Field(default=10_000, ge=1)
    #: how long dropping a partition may wait for its table lock before trying next run (ms)
    lock_timeout_ms: int = Field(default=5_000, ge=1)
    #: seconds between runs of the in-process job
    run_every_s: float = Field(default=3600.0, gt=0)
    #: seconds after start-up before the first run
    first_run_delay_s: float = Field(default=60.0, ge=0)

    def policy(self) -> RetentionPolicy:
        """The job parameters."""
        return RetentionPolicy(
            interval_years=self.interval_years,
            daily_years=self.daily_years,
            consent_extra_years=self.consent_extra_years,
            outbox_days=self.outbox_days,
            audit_years=self.audit_years,
            batch_rows=self.batch_rows,
            lock_timeout_ms=self.lock_timeout_ms,
        )


class WebhookSettings(BaseModel):
    """Webhook delivery (environment ``METERPOORT_WEBHOOK_<NAME>``); tests pass small values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: run the delivery worker in this process
    enabled: bool = True
    #: seconds an attempt may take (connect to end of the answer's headers)
    timeout_s: float = Field(default=10.0, gt=0)
    #: first retry delay; doubles per attempt up to ``backoff_cap_s``; jitter takes up to half off
    backoff_base_s: float = Field(default=10.0, gt=0)
    backoff_cap_s: float = Field(default=3600.0, gt=0)
    #: give a delivery up this long after the event was recorded
    give_up_after_s: float = Field(default=7 * 86400.0, gt=0)
    #: … or after this many attempts (unset: only the age limit)
    max_attempts: int | None = Field(default=None, ge=1)
    #: seconds between polls when nothing is due
    poll_interval_s: float = Field(default=1.0, gt=0)
    #: deliveries claimed (and sent concurrently) per poll
    batch_size: int = Field(default=20, ge=1, le=1000)
    #: a claim's lease beyond ``timeout_s``: time to record the outcome before others may retry
    lease_margin_s: float = Field(default=30.0, gt=0)
    #: seconds between refreshes of the pending gauges
    gauge_interval_s: float = Field(default=5.0, gt=0)
    #: seconds between sweeps announcing consents that passed their expiry
    expiry_sweep_interval_s: float = Field(default=60.0, gt=0)
    #: expiries older than this are not announced any more (e.g. after a long outage)
    expiry_lookback_s: float = Field(default=7 * 86400.0, gt=0)
    #: pause after a database error before the worker tries again
    error_pause_s: float = Field(default=5.0, gt=0)
    #: ``readings.changed``: at most one per client per this many seconds (one job run)
    readings_changed_interval_s: float = Field(default=60.0, gt=0)
    #: ``readings.changed``: most (EAN, granularity) entries in one event; above it the event
    #: says ``truncated`` and the client pulls ``changed_since``
    readings_changed_max_entries: int = Field(default=1000, ge=1, le=100_000)


class Settings(BaseSettings):
    """Every setting of the gateway, with its default."""

    model_config = SettingsConfigDict(
        env_prefix="METERPOORT_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        # METERPOORT_RETENTION_BATCH_ROWS -> retention.batch_rows: split once after the prefix,
        # so top-level names with underscores (METERPOORT_POOL_MAX_SIZE) stay whole
        env_nested_delimiter="_",
        env_nested_max_split=1,
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
    #: HTTPS (``gateway.api.tls``): the server's certificate chain and its unencrypted private
    #: key, PEM files, both or neither; unset: plain HTTP, for a TLS-terminating proxy in front
    tls_cert_file: FilePath | None = None
    tls_key_file: FilePath | None = None
    #: mutual TLS: CA certificates (PEM) that issue device and data-client certificates; with it
    #: (and HTTPS) ``POST /v1/telegrams`` and the data-client API also need a client certificate
    #: this CA verifies; browsers and other callers connect without one
    tls_client_ca_file: FilePath | None = None
    #: bearer token for ``/v1/admin/*``; unset → the admin API refuses every request
    admin_token: SecretStr | None = None
    #: reverse proxies in front of the gateway (addresses or networks; env: a JSON list): only
    #: from these are ``X-Forwarded-For`` and ``X-Forwarded-Proto`` believed
    #: (``gateway.api.client_address``)
    trusted_proxies: list[IPvAnyNetwork] = Field(default_factory=list)
    #: failed authentications allowed per client address, and per credential, within
    #: ``auth_failure_window_s`` before 429; after the burst, one more try per window/limit
    auth_failure_limit: int = Field(default=20, ge=1)
    auth_failure_window_s: float = Field(default=60.0, gt=0)
    #: addresses (and, apart, credentials) whose failures are remembered; least recent go first
    auth_throttle_max_entries: int = Field(default=100_000, ge=1)
    #: trust the local dev key for customer tokens (never in production)
    dev_mode: bool = False
    #: CSP ``frame-ancestors`` of ``/portal``: the origins allowed to embed the customer portal
    #: (the supplier's own portal), e.g. "'self' https://mijn.supplier.example"
    portal_frame_ancestors: str = "'self'"
    #: request body limit (bytes); telegram batches are the largest legitimate bodies
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    #: telegrams per request (413 beyond: the field device halves its batch); bounds the work
    #: and the answer one request can cause (the device sends 100 by default)
    max_telegrams_per_request: int = Field(default=1000, ge=1)
    #: seconds a client may take to send a request line and headers, from their first byte;
    #: a slower client gets 408 and its connection closed (slowloris). Idle keep-alive
    #: connections are not affected: the clock starts with the first byte of a request.
    header_read_timeout_s: float = Field(default=10.0, gt=0)
    #: longest pause (seconds) in the arrival of a request body while its handler waits for it;
    #: a stalled upload gets 408 and its connection closed
    body_read_timeout_s: float = Field(default=30.0, gt=0)
    log_level: str = "INFO"
    #: database pool size per process
    pool_min_size: int = Field(default=2, ge=0)
    pool_max_size: int = Field(default=10, ge=1)
    #: seconds a request waits for a pooled connection before answering 503
    pool_acquire_timeout_s: float = Field(default=5.0, gt=0)
    #: seconds one database statement may take before it is given up (the request answers 503):
    #: without it a half-open or stalled link to PostgreSQL holds requests until TCP gives up,
    #: hours later. Pooled connections only; migrations and the CLI are not bounded.
    db_command_timeout_s: float = Field(default=30.0, gt=0)
    #: seconds a streamed readings pull (NDJSON, CSV) may take as a whole: its COPY is one
    #: statement that lasts as long as the client reads, so ``db_command_timeout_s`` would cut
    #: every export over 30 s (5 million readings take about 25 s at B4's rate). Long, because
    #: the client sets the pace; a dead database link is still found by TCP keepalive.
    db_stream_timeout_s: float = Field(default=6 * 3600.0, gt=0)
    #: Retry-After (seconds) sent with 503 answers
    retry_after_s: int = Field(default=5, ge=1)
    #: seconds to let in-flight requests and batches finish on SIGTERM
    shutdown_timeout_s: float = Field(default=10.0, ge=0)
    #: seconds between SIGTERM and closing the listener: /readyz answers 503 meanwhile while
    #: requests are still served, so a load balancer stops sending new ones first (0: close at
    #: once). SIGINT (Ctrl-C) skips the wait, and so does a second signal.
    shutdown_drain_s: float = Field(default=5.0, ge=0)
    #: one JSON line per request on the ``gateway.access`` logger (method, route template,
    #: status, duration, request id, client address; never paths, query strings or bodies)
    access_log: bool = True
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
    #: retired signing keys (``*.pem``, private or public halves), still published and still
    #: verifying what they signed; unset → ``<data_dir>/retired-keys`` (docs/operations.md)
    retired_signing_keys_dir: Path | None = None
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

    #: the retention and consent-expiry job
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    #: webhook delivery of consent-change notifications
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)

    def database_dsn(self) -> str | None:
        """The configured PostgreSQL URL in clear, or None for the embedded server."""
        return None if self.database_url is None else self.database_url.get_secret_value()
