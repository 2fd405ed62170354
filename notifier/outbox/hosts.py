"""The outbox of a Pyramid or Kinto application: its engine, and each request's session.

For hosts whose data lives in a SQL database (Kinto on PostgreSQL, a Pyramid app with
SQLAlchemy and ``zope.sqlalchemy``), the outbox's rows must go into the session of the
request's own transaction. In Kinto that is its storage's session; in a Pyramid app, the
request attribute (or the function of the request) that ``notifier.outbox_session`` names.
A host that cannot have an outbox, or whose table is missing, fails at start-up.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from notifier.errors import ConfigurationError
from notifier.outbox.relay import Outbox, Publish
from notifier.outbox.table import TABLE, dialect_of, engine_for, table_exists
from notifier.outbox.writing import SessionOf
from notifier.settings import OutboxSettings

__all__ = ["outbox_for"]

logger = logging.getLogger("notifier")


def outbox_for(config: Any, settings: OutboxSettings, publish: Publish) -> Outbox:
    """The outbox of an application configured by ``config`` (Pyramid's), with its relay
    thread started unless ``settings.relay`` is false. Fail with
    :class:`~notifier.errors.ConfigurationError` when the host cannot have one, or when its
    table is not there."""
    host = config.get_settings()
    if host.get("settings_prefix") == "kinto":
        session_of = _kinto_session_of(host, settings)
    else:
        session_of = _pyramid_session_of(config, settings)
    engine = engine_for(settings.url, **_pool_options(settings.url))
    dialect = dialect_of(engine, settings.url_key, settings.url)
    try:
        there = table_exists(engine)
    except sa.exc.SQLAlchemyError as exc:
        # The database may be down for now: the relay tries again; writes would fail anyway.
        logger.warning("outbox: could not look for the %s table (%s)", TABLE, exc)
        there = True
    if not there:
        raise ConfigurationError(
            settings.url_key,
            settings.url,
            f"a {dialect} database with the {TABLE} table: create it with "
            f"`notifier-outbox create --url {settings.url}`",
        )
    outbox = Outbox(
        engine,
        publish,
        session_of,
        relay_after=settings.relay_after,
        relay_others=settings.relay,
    )
    outbox.start()  # with relay_others, also publishes what processes that are gone left
    return outbox


def _pool_options(url: str) -> dict[str, Any]:
    # The relay thread needs one connection at a time.
    return {"pool_size": 1, "max_overflow": 1} if url.startswith("postgresql") else {}


def _kinto_session_of(host: Any, settings: OutboxSettings) -> SessionOf:
    backend = str(host.get("storage_backend", ""))
    if not backend.endswith(".postgresql"):
        raise ConfigurationError(
            "kinto.storage_backend",
            backend,
            "kinto.core.storage.postgresql, for the outbox: its rows commit in Kinto's own "
            "PostgreSQL transaction",
        )
    if str(host.get("transaction_per_request", True)).lower() in ("false", "no", "off", "0"):
        raise ConfigurationError(
            "kinto.transaction_per_request",
            host["transaction_per_request"],
            "true, for the outbox: its rows commit in the request's transaction",
        )

    @contextlib.contextmanager
    def session_of(request: Any) -> Iterator[Any]:
        # Kinto's storage client (kinto.core.storage.postgresql.client.PostgreSQLClient,
        # checked on Kinto 26.5): connect() gives the request's session, joined to its
        # transaction by zope.sqlalchemy, and marks it as changed.
        with request.registry.storage.client.connect() as session:
            yield session

    return session_of


def _pyramid_session_of(config: Any, settings: OutboxSettings) -> SessionOf:
    if "." in settings.session or ":" in settings.session:
        try:
            find = config.maybe_dotted(settings.session)
        except ImportError as exc:
            raise ConfigurationError(
                settings.session_key, settings.session, f"a function of the request: {exc}"
            ) from None
    else:
        name = settings.session

        def find(request: Any) -> Any:
            return getattr(request, name)

    import zope.sqlalchemy

    @contextlib.contextmanager
    def session_of(request: Any) -> Iterator[Any]:
        session = find(request)
        yield session
        # Rows written with SQL alone: tell zope.sqlalchemy that the session has work to commit.
        zope.sqlalchemy.mark_changed(session)

    return session_of
