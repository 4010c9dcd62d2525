"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors
from api.routes import flows, log, statements, tiles, wallet
from api.settings import Settings
from ledger.service import Ledger


def create_app(ledger: Ledger | None = None, settings: Settings | None = None) -> FastAPI:
    """Build the app. Without ``ledger``, open the one the settings name at start-up."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = app.state.ledger is None
        if owned:
            app.state.ledger = Ledger.open(
                settings.database_url, log_key_file=settings.log_key_file
            )
        try:
            yield
        finally:
            if owned:
                app.state.ledger.close()
                app.state.ledger = None

    app = FastAPI(
        title="rxledger",
        version="0.1.0",
        summary="A verifiable audit ledger for e-prescriptions, settlement and consent",
        lifespan=lifespan,
    )
    app.state.ledger = ledger
    app.state.settings = settings
    errors.install(app)
    app.include_router(statements.router)
    app.include_router(log.router)
    app.include_router(flows.router)
    app.include_router(wallet.router)
    app.include_router(tiles.router)
    return app
