"""Gateway settings: environment variables prefixed ``METERPOORT_`` (and ``DATABASE_URL``),
optionally from a ``.env`` file in the working directory.

One ``Settings`` holds everything, with a nested model per background job: ``retention``
(``METERPOORT_RETENTION_<NAME>``) and ``webhook`` (``METERPOORT_WEBHOOK_<NAME>``). The entry point
(``gateway.cli``) builds it once and passes it down; ``create_app(settings)`` and everything
below read no environment, so tests build their settings explicitly.

Each setting is documented by the docstring under it (``use_attribute_docstrings``): its first
paragraph is the one-line summary ``serve --help`` lists, the whole text goes into
``docs/configuration.md`` (``python -m gateway config-reference`` writes it). Every setting needs
one; ``tests/unit/gateway/test_config_reference.py`` says which lacks it.
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

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    enabled: bool = True
    """run the hourly job in the gateway processes"""
    interval_years: int = Field(default=4, ge=1)
    """interval readings are kept this many years after receipt"""
    daily_years: int = Field(default=7, ge=1)
    """daily/monthly readings are kept this many years after the contract ends"""
    consent_extra_years: int = Field(default=1, ge=0)
    """consent records outlive the interval data they justify by this many years"""
    outbox_days: int = Field(default=30, ge=14)
    """days consent-change notifications are kept once every delivery is done or given up

    Outbox events and their webhook deliveries. At least 14: the webhook worker looks back
    7 days for expiries it has not announced yet, and finds that out from them.
    """
    audit_years: int | None = Field(default=None, ge=1)
    """years after which the job removes audit rows; unset: never

    SPEC §2 keeps the trail as long as the data it justifies plus 1 year, and daily readings
    of an open contract are kept indefinitely, so no fixed age is right for every installation:
    the operator decides (8 = 7 fiscal years + 1 is the usual pick), or prunes by hand with
    `audit prune --before`.
    """
    batch_rows: int = Field(default=10_000, ge=1)
    """rows per DELETE statement (each its own short transaction)"""
    lock_timeout_ms: int = Field(default=5_000, ge=1)
    """ms dropping a partition may wait for its table lock before trying next run"""
    compactions_per_run: int = Field(default=1, ge=0)
    """closed interval partitions whose indexes one run rebuilds (0: none)

    A month of interval readings is beyond the spool horizon: no reading can arrive for it any
    more, so its indexes are rebuilt once, packed (`REINDEX TABLE CONCURRENTLY`: ingest goes
    on; it reads the partition twice). One per hourly run works through a backlog of 4 years
    of months in days; afterwards two partitions close each month.
    """
    run_every_s: float = Field(default=3600.0, gt=0)
    """seconds between runs of the in-process job"""
    first_run_delay_s: float = Field(default=60.0, ge=0)
    """seconds after start-up before the first run"""

    def policy(self, *, spool_horizon_days: int = 40) -> RetentionPolicy:
        """The job parameters; ``spool_horizon_days``: ``Settings.spool_horizon_days`` (its
        default here), which says when an interval partition is closed."""
        return RetentionPolicy(
            spool_horizon_days=spool_horizon_days,
            compactions_per_run=self.compactions_per_run,
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

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    enabled: bool = True
    """run the delivery worker in this process"""
    timeout_s: float = Field(default=10.0, gt=0)
    """seconds an attempt may take (connect to end of the answer's headers)"""
    backoff_base_s: float = Field(default=10.0, gt=0)
    """first retry delay (s); doubles per attempt up to `backoff_cap_s`

    Jitter takes up to half off each delay.
    """
    backoff_cap_s: float = Field(default=3600.0, gt=0)
    """longest delay (s) between two attempts of one delivery"""
    give_up_after_s: float = Field(default=7 * 86400.0, gt=0)
    """give a delivery up this many seconds after the event was recorded"""
    max_attempts: int | None = Field(default=None, ge=1)
    """… or after this many attempts (unset: only the age limit)"""
    poll_interval_s: float = Field(default=1.0, gt=0)
    """seconds between polls when nothing is due"""
    batch_size: int = Field(default=20, ge=1, le=1000)
    """deliveries claimed (and sent concurrently) per poll"""
    lease_margin_s: float = Field(default=30.0, gt=0)
    """a claim's lease beyond `timeout_s` (s)

    Time to record the outcome before another process may retry the delivery.
    """
    gauge_interval_s: float = Field(default=5.0, gt=0)
    """seconds between refreshes of the pending gauges"""
    expiry_sweep_interval_s: float = Field(default=60.0, gt=0)
    """seconds between sweeps announcing consents that passed their expiry"""
    expiry_lookback_s: float = Field(default=7 * 86400.0, gt=0)
    """expiries older than this (s) are not announced any more (e.g. after a long outage)"""
    error_pause_s: float = Field(default=5.0, gt=0)
    """pause (s) after a database error before the worker tries again"""
    readings_changed_interval_s: float = Field(default=60.0, gt=0)
    """`readings.changed`: at most one per client per this many seconds (one job run)"""
    readings_changed_max_entries: int = Field(default=1000, ge=1, le=100_000)
    """`readings.changed`: most (EAN, granularity) entries in one event

    Above it the event says `truncated` and the client pulls `changed_since`.
    """


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
        use_attribute_docstrings=True,
    )

    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "METERPOORT_DATABASE_URL", "database_url"),
    )
    """PostgreSQL ≥ 14 to use; unset: an embedded server with its data under `data_dir`"""
    data_dir: Path = Path("./var")
    """where the embedded PostgreSQL (`<data_dir>/pg`) and local keys live"""
    host: str = "127.0.0.1"
    """HTTP listen address (`serve --host`)"""
    port: int = Field(default=8080, ge=0, le=65535)
    """HTTP listen port (`serve --port`; 0: any free port, one worker only)"""
    workers: int = Field(default=1, ge=1, le=64)
    """gateway processes sharing the port (`serve --workers`)"""
    tls_cert_file: FilePath | None = None
    """HTTPS: the server's certificate chain, PEM (`serve --tls-cert`; with `tls_key_file`)

    Both or neither; unset: plain HTTP, for a TLS-terminating proxy in front
    (`gateway.api.tls`).
    """
    tls_key_file: FilePath | None = None
    """HTTPS: the certificate's unencrypted private key, PEM (`serve --tls-key`)"""
    tls_client_ca_file: FilePath | None = None
    """mutual TLS: CA certificates (PEM) that issue device and data-client certificates

    With it (and HTTPS) `POST /v1/telegrams` and the data-client API also need a client
    certificate this CA verifies; browsers and other callers connect without one
    (`serve --tls-client-ca`).
    """
    admin_token: SecretStr | None = None
    """bearer token for `/v1/admin/*`; unset: the admin API refuses every request"""
    trusted_proxies: list[IPvAnyNetwork] = Field(default_factory=list)
    """reverse proxies in front of the gateway (addresses or networks; env: a JSON list)

    Only from these are `X-Forwarded-For` and `X-Forwarded-Proto` believed
    (`gateway.api.client_address`).
    """
    auth_failure_limit: int = Field(default=20, ge=1)
    """failed authentications allowed within `auth_failure_window_s` before 429

    Counted per client address, and per credential. After the burst, one more try per
    window/limit.
    """
    auth_failure_window_s: float = Field(default=60.0, gt=0)
    """the window (s) of `auth_failure_limit`"""
    auth_throttle_max_entries: int = Field(default=100_000, ge=1)
    """addresses (and, apart, credentials) whose failures are remembered

    The least recent go first.
    """
    dev_mode: bool = False
    """trust the local dev key for customer tokens (never in production)

    `serve` then creates `<data_dir>/dev-customer-key.pem`, which `token customer` signs with.
    """
    portal_frame_ancestors: str = "'self'"
    """CSP `frame-ancestors` of `/portal`: the origins allowed to embed the customer portal

    The supplier's own portal, e.g. "'self' https://mijn.supplier.example".
    """
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    """request body limit (bytes); telegram batches are the largest legitimate bodies"""
    max_telegrams_per_request: int = Field(default=1000, ge=1)
    """telegrams per request (413 beyond: the field device halves its batch)

    Bounds the work and the answer one request can cause (the device sends 100 by default).
    """
    header_read_timeout_s: float = Field(default=10.0, gt=0)
    """seconds a client may take to send a request line and headers (then 408)

    Counted from their first byte; a slower client gets 408 and its connection closed
    (slowloris). Idle keep-alive connections are not affected: the clock starts with the first
    byte of a request.
    """
    body_read_timeout_s: float = Field(default=30.0, gt=0)
    """longest pause (s) in the arrival of a request body (then 408)

    While its handler waits for it; a stalled upload gets 408 and its connection closed.
    """
    log_level: str = "INFO"
    """log level of the JSON log lines on stderr (DEBUG, INFO, WARNING, ERROR)"""
    pool_min_size: int = Field(default=2, ge=0)
    """database connections each process keeps open"""
    pool_max_size: int = Field(default=10, ge=1)
    """most database connections per process"""
    pool_acquire_timeout_s: float = Field(default=5.0, gt=0)
    """seconds a request waits for a pooled connection before answering 503"""
    db_command_timeout_s: float = Field(default=30.0, gt=0)
    """seconds one database statement may take before it is given up (503)

    Without it a half-open or stalled link to PostgreSQL holds requests until TCP gives up,
    hours later. Pooled connections only; migrations and the CLI are not bounded.
    """
    db_stream_timeout_s: float = Field(default=6 * 3600.0, gt=0)
    """seconds a streamed readings pull (NDJSON, CSV) may take as a whole

    Its COPY is one statement that lasts as long as the client reads, so `db_command_timeout_s`
    would cut every export over 30 s (5 million readings take about 25 s at B4's rate). Long,
    because the client sets the pace; a dead database link is still found by TCP keepalive.
    """
    retry_after_s: int = Field(default=5, ge=1)
    """Retry-After (seconds) sent with 503 answers"""
    shutdown_timeout_s: float = Field(default=10.0, ge=0)
    """seconds to let in-flight requests and batches finish on SIGTERM"""
    shutdown_drain_s: float = Field(default=5.0, ge=0)
    """seconds between SIGTERM and closing the listener (0: close at once)

    `/readyz` answers 503 meanwhile while requests are still served, so a load balancer stops
    sending new ones first. SIGINT (Ctrl-C) skips the wait, and so does a second signal.
    """
    access_log: bool = True
    """one JSON line per request on the `gateway.access` logger

    Method, route template, status, duration, request id, client address; never paths, query
    strings or bodies.
    """
    ingest_batch_max_delay_ms: int = Field(default=5, ge=0)
    """most ms the ingest writer waits to group readings into one commit, and only while other
    requests are still on their way to it (authenticating, sending their body)"""
    ingest_batch_max_rows: int = Field(default=5000, ge=1)
    """most readings the ingest writer commits at once"""
    future_tolerance_s: int = Field(default=300, ge=0)
    """readings measured more than this many seconds ahead of the server clock are rejected"""
    spool_horizon_days: int = Field(default=40, ge=1)
    """readings older than this are rejected (the field device's spool horizon)"""
    tz: str = "Europe/Amsterdam"
    """time zone of local dates and times (IANA name): days, months, CLI times"""
    partitions_ahead_months: int = Field(default=2, ge=1)
    """months of reading partitions created ahead of now"""
    customer_jwt_issuer: str | None = None
    """customer tokens: the identity provider's `iss` (required once its keys are configured)"""
    customer_jwt_audience: str = "meterpoort"
    """customer tokens: the `aud` they must carry"""
    customer_jwt_keys: list[Path] = Field(default_factory=list)
    """customer tokens: PEM public-key files, Ed25519 or EC P-256 (env: a JSON list)"""
    customer_jwks_file: Path | None = None
    """customer tokens: a JWKS file"""
    customer_jwks_url: str | None = None
    """customer tokens: a JWKS URL (fetched over HTTP and cached)"""
    customer_jwks_cache_s: float = Field(default=300.0, gt=0)
    """seconds the keys fetched from `customer_jwks_url` are cached"""
    signing_key_file: Path | None = None
    """receipt/webhook Ed25519 signing key (PKCS#8 PEM); unset: `<data_dir>/signing-key.pem`"""
    retired_signing_keys_dir: Path | None = None
    """retired signing keys (`*.pem`, private or public halves); unset: `<data_dir>/retired-keys`

    Still published in `/v1/keys` and still verifying what they signed (docs/operations.md).
    """
    controller_name: str = "Meterpoort energy supplier"
    """the PII controller named in consent receipts (Kantara `piiControllers`)"""
    controller_contact: str = "Privacy officer"
    """consent receipts: the controller's contact person"""
    controller_address: str = "Netherlands"
    """consent receipts: the controller's postal address"""
    controller_email: str = "privacy@example.nl"
    """consent receipts: the controller's e-mail address"""
    controller_phone: str | None = None
    """consent receipts: the controller's phone number"""
    privacy_policy_url: str = "https://example.nl/privacy"
    """consent receipts: the privacy policy they point at"""
    receipt_language: str = "nl"
    """consent receipts: their language (ISO 639-1)"""
    public_base_url: str | None = None
    """the gateway's external base URL; receipts point at `<base>/v1/keys#<kid>`"""
    consent_max_lifetime_days: int = Field(default=1096, ge=1)
    """longest a consent may run (SPEC §4: configurable, default 3 years)

    A consent given without `expires_at` expires after this.
    """

    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    """the retention and consent-expiry job"""
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    """webhook delivery of consent-change notifications"""

    def database_dsn(self) -> str | None:
        """The configured PostgreSQL URL in clear, or None for the embedded server."""
        return None if self.database_url is None else self.database_url.get_secret_value()
