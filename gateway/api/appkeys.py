"""The typed keys of the application's shared state, in one leaf module.

``create_app`` (``gateway.api.app``) sets every one of them; handlers read them. Keeping them
here, apart from the composition root, is what lets handler modules import each other's
dependencies at the top of the file without a circle back to ``app``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

import asyncpg
from aiohttp import web

from gateway.api.customer_auth import CustomerAuthenticator
from gateway.api.throttle import AuthThrottle
from gateway.ingest.state import IngestState
from gateway.jobs.webhooks import WebhookWorker
from gateway.keys import KeyRing
from gateway.settings import Settings
from gateway.storage.credentials import Credentials
from gateway.storage.readings_query import CursorCodec

#: the installation's settings
SETTINGS_KEY: Final = web.AppKey("settings", Settings)
#: the asyncpg pool of this process (set once the app starts)
POOL_KEY: Final = web.AppKey("pool", asyncpg.Pool)
#: device and client token look-ups with this app's caches (set once the pool exists)
CREDENTIALS_KEY: Final = web.AppKey("credentials", Credentials)
#: customer JWT verification
CUSTOMER_AUTH_KEY: Final = web.AppKey("customer_auth", CustomerAuthenticator)
#: this process's count of authentication failures; tests may replace it before start-up
THROTTLE_KEY: Final = web.AppKey("auth_throttle", AuthThrottle)
#: the receipt/webhook/cursor signing key
KEYRING_KEY: Final = web.AppKey("keyring", KeyRing)
#: signs and checks the billing pull's page cursors
CURSOR_CODEC_KEY: Final = web.AppKey("readings_cursor_codec", CursorCodec)
#: the ingest machinery (set once the app starts)
INGEST_KEY: Final = web.AppKey("ingest", IngestState)
#: set before start-up to run the app on another clock (tests replaying a past day)
CLOCK_KEY: Final[web.AppKey[Callable[[], float]]] = web.AppKey("ingest_clock")
#: set to False before start-up to run without LISTEN (tests making a cache stale on purpose)
LISTEN_KEY: Final = web.AppKey("ingest_listen", bool)
#: the webhook worker of this process, while it runs
WEBHOOK_WORKER_KEY: Final = web.AppKey("webhook_worker", WebhookWorker)
#: the OpenAPI document served at /openapi.json
OPENAPI_KEY: Final[web.AppKey[dict[str, Any]]] = web.AppKey("openapi")
#: set when shutdown begins: /readyz answers 503 while the listener still serves (the drain)
DRAINING_KEY: Final = web.AppKey("draining", asyncio.Event)
