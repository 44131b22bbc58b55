"""gateway: the Meterpoort service.

Public surface: ``gateway.settings.Settings`` and ``gateway.app.create_app`` (the composition
root), the CLI ``gateway.cli.main`` (``python -m gateway``), the error tree in
``gateway.errors``. Everything else is internal to the service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.app import create_app
    from gateway.settings import Settings

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    # lazy, so importing a submodule (e.g. gateway.errors) does not pull in aiohttp and asyncpg
    if name == "create_app":
        from gateway.app import create_app

        return create_app
    if name == "Settings":
        from gateway.settings import Settings

        return Settings
    raise AttributeError(f"module 'gateway' has no attribute {name!r}")
