"""A small Pyramid app with ``blog`` and ``article`` resources, whose changes notifier publishes.

Blogs and articles live in SQLite (SQLAlchemy, one transaction per request with pyramid_tm).
Every create, update and delete declares the change with ``request.notify_resource_changed``;
the workers' built-in search index listener keeps ``GET /search?q=`` up to date.

    POST   /articles            {"title": ..., "body": ...}   -> 201
    GET    /articles
    GET    /articles/{id}
    PUT    /articles/{id}       {"title": ..., "body": ...}   (replace)
    PATCH  /articles/{id}       {"title": ...}                (merge)
    DELETE /articles/{id}
    PUT    /blogs/{blog_id}     {"title": ...}                -> 201 (create), 200 (replace)
    GET    /blogs/{blog_id}
    DELETE /blogs/{blog_id}                                   (the blog and its articles)
    POST   /blogs/{blog_id}/articles, GET, and /blogs/{blog_id}/articles/{id}: as /articles
    POST   /batch               {"requests": [{"method": ..., "path": ..., "body": ...}, ...]}
    GET    /search?q=words

``/articles`` are articles outside any blog. An article in a blog has the blog as its parent:
its events carry ``blog_id``, and deleting the blog deletes it with one ``delete`` event of the
blog, none of its articles, as Kinto does for a collection and its records.

Every write takes its ``last_modified`` from one clock in the database, which counts in
milliseconds and ticks at least once per change, so that versions follow the commit order.
``POST /batch`` runs its requests in one transaction, all or nothing (stricter than Kinto's,
which goes on after a failed request): if one fails, the batch answers with that request's
status, and nothing is stored or published.

With ``notifier.outbox = true`` (on in ``settings_from_environ`` and ``examples/articles.ini``;
``make_app`` leaves it to its settings), the messages of a write commit in its transaction, in
the ``notifier_outbox`` table of the app's database, which the app creates at start-up with its
own tables (another app would run ``notifier-outbox create --url URL`` once): a web process
killed after a commit loses no message, and one the broker did not take waits there.

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
import sys
import time
import uuid
from contextlib import closing
from typing import Any

import zope.sqlalchemy
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPBadRequest, HTTPConflict, HTTPException, HTTPNotFound
from pyramid.request import Request
from pyramid.response import Response
from pyramid.settings import asbool
from pyramid.view import view_config
from sqlalchemy import (
    BigInteger,
    Engine,
    Integer,
    String,
    Text,
    delete,
    engine_from_config,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from notifier.outbox import create_table

# An article outside any blog (``/articles``) is stored with this blog id, never shown.
NO_BLOG = ""

BATCH_MAX_REQUESTS = 25  # Kinto's default batch_max_requests

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Base(DeclarativeBase):
    pass


class Clock(Base):
    """One row: the last version handed out, in milliseconds."""

    __tablename__ = "clock"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class Blog(Base):
    __tablename__ = "blogs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    last_modified: Mapped[int] = mapped_column(BigInteger)

    def as_record(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "last_modified": self.last_modified}


class Article(Base):
    __tablename__ = "articles"

    blog_id: Mapped[str] = mapped_column(String(64), primary_key=True, default=NO_BLOG)
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


def _tick(request: Request) -> int:
    """A new version, greater than every one handed out before: call it before anything else
    in a write, and once per change."""
    # Writing first takes SQLite's write lock at once: a concurrent write waits here for the
    # busy timeout, instead of failing with "database is locked" when a transaction that read
    # first tries to write. Holding the lock until the commit makes versions follow commits.
    version: int = request.dbsession.execute(
        text("UPDATE clock SET value = max(value + 1, :now) RETURNING value"),
        {"now": _now_ms()},
    ).scalar_one()
    return version


def _json_object(request: Request) -> dict[str, Any]:
    try:
        data = request.json_body
    except ValueError:
        raise HTTPBadRequest(json={"error": "the body is not JSON"}) from None
    if not isinstance(data, dict):
        raise HTTPBadRequest(json={"error": "the body is not a JSON object"})
    return data


def _fields(request: Request, *, partial: bool) -> dict[str, str]:
    data = _json_object(request)
    fields = {key: data[key] for key in ("title", "body") if key in data}
    if not all(isinstance(value, str) for value in fields.values()):
        raise HTTPBadRequest(json={"error": "title and body are strings"})
    if not partial and "title" not in fields:
        raise HTTPBadRequest(json={"error": "an article needs a title"})
    return fields


def _blog(request: Request) -> Blog:
    blog = request.dbsession.get(Blog, request.matchdict["blog_id"])
    if blog is None:
        raise HTTPNotFound(json={"error": "no such blog"})
    return blog


def _blog_id(request: Request) -> str:
    """The id of the blog that the request's articles are in, once checked, else ``NO_BLOG``."""
    return _blog(request).id if "blog_id" in request.matchdict else NO_BLOG


def _article(request: Request) -> Article:
    article = request.dbsession.get(Article, (_blog_id(request), request.matchdict["id"]))
    if article is None:
        raise HTTPNotFound(json={"error": "no such article"})
    return article


@view_config(route_name="articles", request_method="POST", renderer="json")
@view_config(route_name="blog_articles", request_method="POST", renderer="json")
def create_article(request: Request) -> dict[str, Any]:
    fields = _fields(request, partial=False)
    fields.setdefault("body", "")
    article_id = request.json_body.get("id") or uuid.uuid4().hex
    if not isinstance(article_id, str) or not _ID.fullmatch(article_id):
        raise HTTPBadRequest(json={"error": "an id is 1 to 64 letters, digits, - and _"})
    version = _tick(request)
    blog_id = _blog_id(request)
    if request.dbsession.get(Article, (blog_id, article_id)) is not None:
        raise HTTPConflict(json={"error": "an article with this id exists already"})
    article = Article(blog_id=blog_id, id=article_id, last_modified=version, **fields)
    request.dbsession.add(article)
    request.notify_resource_changed("create", "article", article.id, new=article.as_record())
    request.response.status_code = 201
    return {"data": article.as_record()}


@view_config(route_name="articles", request_method="GET", renderer="json")
@view_config(route_name="blog_articles", request_method="GET", renderer="json")
def list_articles(request: Request) -> dict[str, Any]:
    articles = request.dbsession.scalars(
        select(Article).where(Article.blog_id == _blog_id(request)).order_by(Article.last_modified)
    )
    return {"data": [article.as_record() for article in articles]}


@view_config(route_name="article", request_method="GET", renderer="json")
@view_config(route_name="blog_article", request_method="GET", renderer="json")
def get_article(request: Request) -> dict[str, Any]:
    return {"data": _article(request).as_record()}


@view_config(route_name="article", request_method=("PUT", "PATCH"), renderer="json")
@view_config(route_name="blog_article", request_method=("PUT", "PATCH"), renderer="json")
def update_article(request: Request) -> dict[str, Any]:
    fields = _fields(request, partial=request.method == "PATCH")
    version = _tick(request)
    article = _article(request)
    old = article.as_record()
    if request.method == "PUT":
        fields.setdefault("body", "")
    for key, value in fields.items():
        setattr(article, key, value)
    article.last_modified = version
    request.notify_resource_changed("update", "article", new=article.as_record(), old=old)
    return {"data": article.as_record()}


@view_config(route_name="article", request_method="DELETE", renderer="json")
@view_config(route_name="blog_article", request_method="DELETE", renderer="json")
def delete_article(request: Request) -> dict[str, Any]:
    version = _tick(request)
    article = _article(request)
    old = article.as_record()
    tombstone = {"id": article.id, "last_modified": version, "deleted": True}
    request.dbsession.delete(article)
    request.notify_resource_changed("delete", "article", new=tombstone, old=old)
    return {"data": tombstone}


@view_config(route_name="blog", request_method="PUT", renderer="json")
def put_blog(request: Request) -> dict[str, Any]:
    data = _json_object(request)
    if not isinstance(data.get("title"), str):
        raise HTTPBadRequest(json={"error": "a blog needs a title, a string"})
    blog_id = request.matchdict["blog_id"]
    if not _ID.fullmatch(blog_id):
        raise HTTPBadRequest(json={"error": "an id is 1 to 64 letters, digits, - and _"})
    version = _tick(request)
    blog = request.dbsession.get(Blog, blog_id)
    if blog is None:
        blog = Blog(id=blog_id, title=data["title"], last_modified=version)
        request.dbsession.add(blog)
        request.notify_resource_changed("create", "blog", blog_id, new=blog.as_record())
        request.response.status_code = 201
    else:
        old = blog.as_record()
        blog.title, blog.last_modified = data["title"], version
        request.notify_resource_changed("update", "blog", blog_id, new=blog.as_record(), old=old)
    return {"data": blog.as_record()}


@view_config(route_name="blog", request_method="GET", renderer="json")
def get_blog(request: Request) -> dict[str, Any]:
    return {"data": _blog(request).as_record()}


@view_config(route_name="blog", request_method="DELETE", renderer="json")
def delete_blog(request: Request) -> dict[str, Any]:
    version = _tick(request)
    blog = _blog(request)
    old = blog.as_record()
    tombstone = {"id": blog.id, "last_modified": version, "deleted": True}
    # Kinto notifies a collection's delete alone, not its records': whoever listens to the
    # parent knows that its children went with it.
    request.dbsession.execute(delete(Article).where(Article.blog_id == blog.id))
    request.dbsession.delete(blog)
    request.notify_resource_changed("delete", "blog", blog.id, new=tombstone, old=old)
    return {"data": tombstone}


def _batch_requests(request: Request) -> list[dict[str, Any]]:
    data = _json_object(request)
    requests, defaults = data.get("requests"), data.get("defaults", {})
    if not isinstance(requests, list) or not requests:
        raise HTTPBadRequest(json={"error": "a batch needs a list of requests"})
    if len(requests) > BATCH_MAX_REQUESTS:
        raise HTTPBadRequest(json={"error": f"a batch holds at most {BATCH_MAX_REQUESTS} requests"})
    if not isinstance(defaults, dict):
        raise HTTPBadRequest(json={"error": "defaults is a JSON object"})
    merged = []
    for index, subrequest in enumerate(requests):
        if not isinstance(subrequest, dict):
            raise HTTPBadRequest(json={"error": f"request {index} is not a JSON object"})
        one = {**defaults, **subrequest}
        if isinstance(defaults.get("body"), dict) and isinstance(subrequest.get("body"), dict):
            one["body"] = {**defaults["body"], **subrequest["body"]}
        one.setdefault("method", "GET")
        if one["method"] not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            raise HTTPBadRequest(json={"error": f"request {index}: unknown method"})
        path = one.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise HTTPBadRequest(json={"error": f"request {index}: a path starts with /"})
        if path.split("?")[0].rstrip("/") == "/batch":
            raise HTTPBadRequest(json={"error": f"request {index}: a batch holds no batch"})
        merged.append(one)
    return merged


def _answer(request: Request, subrequest: Request) -> Response:
    try:
        response: Response = request.invoke_subrequest(subrequest, use_tweens=False)
    except Exception:
        # Without tweens, no exception view ran: render the error as the app would.
        response = subrequest.invoke_exception_view(sys.exc_info(), reraise=True)
    if isinstance(response, HTTPException):
        response.prepare(subrequest.environ)  # the body WSGI would have written (JSON)
    return response


@view_config(route_name="batch", request_method="POST", renderer="json")
def batch(request: Request) -> dict[str, Any]:
    """Run the requests in order, in this request's transaction: all of them, or none."""
    responses = []
    for index, one in enumerate(_batch_requests(request)):
        subrequest = Request.blank(
            one["path"], method=one["method"], headers={"Accept": "application/json"}
        )
        if "body" in one:
            subrequest.content_type = "application/json"
            subrequest.body = json.dumps(one["body"]).encode()
        # notifier, and dbsession below, see the subrequest as part of this request.
        subrequest.parent = request
        response = _answer(request, subrequest)
        is_json = response.content_type == "application/json"
        answer = {
            "status": response.status_int,
            "path": one["path"],
            "body": response.json_body if is_json else response.text,
        }
        if response.status_int >= 400:
            request.tm.doom()
            request.response.status_code = response.status_int
            return {
                "error": f"request {index} of the batch failed: nothing was stored",
                "index": index,
                "response": answer,
            }
        responses.append(answer)
    return {"responses": responses}


@view_config(route_name="search", request_method="GET", renderer="json")
def search(request: Request) -> dict[str, Any]:
    """Read the index that the workers keep (schema: see ``tasks.builtin.search_index``)."""
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


def _sqlite_log_mode(dbapi_connection: Any, record: Any) -> None:
    # WAL: searches and the outbox's relay read without waiting for a write, and a commit is
    # one write to the log, synced at checkpoints only (synchronous=NORMAL): it survives the
    # app's crash or kill -9, not a power loss. The bench's writers (row 7) took 100 writes/s
    # in the default rollback journal, each holding the write lock through its syncs.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _create_tables(engine: Engine, *, outbox: bool) -> None:
    """The app's tables, and with ``outbox`` notifier's outbox table beside them."""
    with engine.begin() as connection:
        schema = inspect(connection)
        if schema.has_table("articles") and "blog_id" not in {
            column["name"] for column in schema.get_columns("articles")
        }:
            # A database of the app before blogs: its articles are outside any blog.
            connection.execute(text("ALTER TABLE articles RENAME TO articles_before_blogs"))
            Base.metadata.create_all(connection)
            connection.execute(
                text(
                    "INSERT INTO articles (blog_id, id, title, body, last_modified) "
                    "SELECT :no_blog, id, title, body, last_modified FROM articles_before_blogs"
                ),
                {"no_blog": NO_BLOG},
            )
            connection.execute(text("DROP TABLE articles_before_blogs"))
        Base.metadata.create_all(connection)
        connection.execute(text("INSERT OR IGNORE INTO clock (id, value) VALUES (1, 0)"))
    if outbox:
        # What `notifier-outbox create` does. In the app's own database: notifier's default.
        create_table(engine.url.render_as_string(hide_password=False))


def make_app(settings: dict[str, Any]) -> Any:
    """The WSGI app. Settings: ``sqlalchemy.url``, ``search.index`` and ``notifier.*``
    (``notifier.outbox = true``: the outbox, in the app's database)."""
    settings = {"tm.manager_hook": "pyramid_tm.explicit_manager", **settings}
    engine = engine_from_config(settings, "sqlalchemy.")
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_log_mode)
    # Before notifier's include, which checks that the outbox table is there.
    _create_tables(engine, outbox=asbool(settings.get("notifier.outbox", False)))
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("notifier")
        factory = sessionmaker(bind=engine)

        def dbsession(request: Request) -> Session:
            parent = getattr(request, "parent", None)
            if parent is not None:
                shared: Session = parent.dbsession  # a batch's subrequest writes in its session
                return shared
            session = factory()
            zope.sqlalchemy.register(session, transaction_manager=request.tm)
            return session

        config.add_request_method(dbsession, reify=True)
        config.add_route("articles", "/articles")
        config.add_route("article", "/articles/{id}")
        config.add_route("blog", "/blogs/{blog_id}")
        config.add_route("blog_articles", "/blogs/{blog_id}/articles")
        config.add_route("blog_article", "/blogs/{blog_id}/articles/{id}")
        config.add_route("batch", "/batch")
        config.add_route("search", "/search")
        config.scan(__name__)
    return config.make_wsgi_app()


def main(global_config: dict[str, Any], **settings: Any) -> Any:
    """The paste entry point, for ``pserve``."""
    return make_app(settings)


def settings_from_environ(directory: str = ".") -> dict[str, str]:
    """Settings for a run from the command line, with the outbox (``NOTIFIER_OUTBOX=false``:
    without, the spool); notifier reads the others from the environment."""
    return {
        "sqlalchemy.url": os.environ.get(
            "ARTICLES_DATABASE_URL", f"sqlite:///{directory}/articles.sqlite3"
        ),
        "search.index": os.environ.get(
            "NOTIFIER_SEARCH_INDEX", f"{directory}/search-index.sqlite3"
        ),
        "notifier.outbox": os.environ.get("NOTIFIER_OUTBOX", "true"),
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
