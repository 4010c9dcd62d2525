"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from api import errors
from api.limits import BodyLimit
from api.routes import flows, log, payloads, statements, tiles, wallet
from api.settings import Settings
from ledger.service import Ledger
from ledger.witnessing import WitnessSubmitter


def create_app(
    ledger: Ledger | None = None,
    settings: Settings | None = None,
    *,
    witness_client: httpx.Client | None = None,
) -> FastAPI:
    """Build the app. Without ``ledger``, open the one the settings name at start-up.

    With witnesses configured (``settings.witnesses``), a background
    :class:`~ledger.witnessing.WitnessSubmitter` sends them each new checkpoint
    while the app runs (``app.state.witnessing``); ``witness_client`` is the
    HTTP client it uses (default: its own).
    """
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = app.state.ledger is None
        if owned:
            app.state.ledger = Ledger.open(
                settings.database_url, log_key_file=settings.log_key_file
            )
        submitter = None
        if settings.witnesses:
            submitter = WitnessSubmitter(
                app.state.ledger.engine,
                settings.witnesses,
                client=witness_client,
                interval=settings.witness_interval,
            )
            submitter.start()
        app.state.witnessing = submitter
        try:
            yield
        finally:
            if submitter is not None:
                submitter.stop()
                app.state.witnessing = None
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
    app.state.witnessing = None
    errors.install(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.include_router(statements.router)
    app.include_router(log.router)
    app.include_router(flows.router)
    app.include_router(wallet.router)
    app.include_router(payloads.router)
    app.include_router(tiles.router)
    return app
