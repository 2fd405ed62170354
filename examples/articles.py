"""A small Pyramid app with an ``article`` resource, whose changes notifier publishes.

Articles live in SQLite (SQLAlchemy, one transaction per request with pyramid_tm). Every
create, update and delete declares the change with ``request.notify_resource_changed``; the
workers' built-in search index listener keeps ``GET /search?q=`` up to date.

    POST   /articles            {"title": ..., "body": ...}   -> 201
    GET    /articles
    GET    /articles/{id}
    PUT    /articles/{id}       {"title": ..., "body": ...}   (replace)
    PATCH  /articles/{id}       {"title": ...}                (merge)
    DELETE /articles/{id}
    GET    /search?q=words

Run it with ``python -m examples.articles --port 6543`` (settings from the environment, see
``settings_from_environ``), or from an ini file:
``python -m pyramid.scripts.pserve examples/articles.ini``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import time
import uuid
from contextlib import closing
from typing import Any

import zope.sqlalchemy
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPBadRequest, HTTPConflict, HTTPNotFound
from pyramid.request import Request
from pyramid.view import view_config
from sqlalchemy import BigInteger, String, Text, engine_from_config, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


class Article(Base):
    __tablename__ = "articles"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text, default="")
    last_modified: Mapped[int] = mapped_column(BigInteger)

    def as_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "body": self.body,
            "last_modified": self.last_modified,
        }


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _fields(request: Request, *, partial: bool) -> dict[str, str]:
    try:
        data = request.json_body
    except ValueError:
        raise HTTPBadRequest(json={"error": "the body is not JSON"}) from None
    if not isinstance(data, dict):
        raise HTTPBadRequest(json={"error": "the body is not a JSON object"})
    fields = {key: data[key] for key in ("title", "body") if key in data}
    if not all(isinstance(value, str) for value in fields.values()):
        raise HTTPBadRequest(json={"error": "title and body are strings"})
    if not partial and "title" not in fields:
        raise HTTPBadRequest(json={"error": "an article needs a title"})
    return fields


def _article(request: Request) -> Article:
    article = request.dbsession.get(Article, request.matchdict["id"])
    if article is None:
        raise HTTPNotFound(json={"error": "no such article"})
    return article


@view_config(route_name="articles", request_method="POST", renderer="json")
def create_article(request: Request) -> dict[str, Any]:
    fields = _fields(request, partial=False)
    fields.setdefault("body", "")
    article_id = request.json_body.get("id") or uuid.uuid4().hex
    if not isinstance(article_id, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", article_id):
        raise HTTPBadRequest(json={"error": "an id is 1 to 64 letters, digits, - and _"})
    article = Article(id=article_id, last_modified=_now_ms(), **fields)
    request.dbsession.add(article)
    request.notify_resource_changed("create", "article", article.id, new=article.as_record())
    request.response.status_code = 201
    return {"data": article.as_record()}


@view_config(route_name="articles", request_method="GET", renderer="json")
def list_articles(request: Request) -> dict[str, Any]:
    articles = request.dbsession.scalars(select(Article).order_by(Article.last_modified))
    return {"data": [article.as_record() for article in articles]}


@view_config(route_name="article", request_method="GET", renderer="json")
def get_article(request: Request) -> dict[str, Any]:
    return {"data": _article(request).as_record()}


@view_config(route_name="article", request_method=("PUT", "PATCH"), renderer="json")
def update_article(request: Request) -> dict[str, Any]:
    fields = _fields(request, partial=request.method == "PATCH")
    article = _article(request)
    old = article.as_record()
    if request.method == "PUT":
        fields.setdefault("body", "")
    for key, value in fields.items():
        setattr(article, key, value)
    article.last_modified = max(_now_ms(), old["last_modified"] + 1)
    request.notify_resource_changed("update", "article", new=article.as_record(), old=old)
    return {"data": article.as_record()}


@view_config(route_name="article", request_method="DELETE", renderer="json")
def delete_article(request: Request) -> dict[str, Any]:
    article = _article(request)
    old = article.as_record()
    tombstone = {
        "id": article.id,
        "last_modified": max(_now_ms(), old["last_modified"] + 1),
        "deleted": True,
    }
    request.dbsession.delete(article)
    request.notify_resource_changed("delete", "article", new=tombstone, old=old)
    return {"data": tombstone}


@view_config(route_name="search", request_method="GET", renderer="json")
def search(request: Request) -> dict[str, Any]:
    """Read the index that the workers keep (schema: see ``tasks.search``)."""
    words = " ".join(f'"{word}"' for word in request.params.get("q", "").split() if '"' not in word)
    path = request.registry.settings["search.index"]
    if not words or not os.path.exists(path):
        return {"data": []}
    with closing(sqlite3.connect(path, timeout=10)) as connection:
        if not connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'records'").fetchone():
            return {"data": []}  # no worker has created the index yet
        rows = connection.execute(
            "SELECT r.record FROM records_fts JOIN records r ON r.id = records_fts.rowid "
            "WHERE records_fts MATCH ? AND r.resource_name = 'article' AND NOT r.deleted "
            "ORDER BY rank",
            (words,),
        ).fetchall()
    return {"data": [json.loads(row[0]) for row in rows]}


@view_config(context=IntegrityError, renderer="json")
def conflict(exc: IntegrityError, request: Request) -> dict[str, Any]:
    request.response.status_code = HTTPConflict.code
    return {"error": "an article with this id exists already"}


def make_app(settings: dict[str, Any]) -> Any:
    """The WSGI app. Settings: ``sqlalchemy.url``, ``search.index`` and ``notifier.*``."""
    settings = {"tm.manager_hook": "pyramid_tm.explicit_manager", **settings}
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("notifier")
        engine = engine_from_config(settings, "sqlalchemy.")
        Base.metadata.create_all(engine)
        factory = sessionmaker(bind=engine)

        def dbsession(request: Request) -> Session:
            session = factory()
            zope.sqlalchemy.register(session, transaction_manager=request.tm)
            return session

        config.add_request_method(dbsession, reify=True)
        config.add_route("articles", "/articles")
        config.add_route("article", "/articles/{id}")
        config.add_route("search", "/search")
        config.scan(__name__)
    return config.make_wsgi_app()


def main(global_config: dict[str, Any], **settings: Any) -> Any:
    """The paste entry point, for ``pserve``."""
    return make_app(settings)


def settings_from_environ(directory: str = ".") -> dict[str, str]:
    """Settings for a run from the command line; notifier reads its own from the environment."""
    return {
        "sqlalchemy.url": os.environ.get(
            "ARTICLES_DATABASE_URL", f"sqlite:///{directory}/articles.sqlite3"
        ),
        "search.index": os.environ.get(
            "NOTIFIER_SEARCH_INDEX", f"{directory}/search-index.sqlite3"
        ),
    }


if __name__ == "__main__":
    import logging

    from waitress import serve

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s [%(name)s] %(message)s"
    )
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6543)
    arguments = parser.parse_args()
    serve(make_app(settings_from_environ()), host=arguments.host, port=arguments.port)
