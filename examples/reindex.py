"""Rebuild the search index from the example app's database, for disaster recovery.

    python -m examples.reindex [--database URL] [--index PATH]

(defaults: ``$ARTICLES_DATABASE_URL`` and ``$NOTIFIER_SEARCH_INDEX``, as the app reads them).
It reads every article in one snapshot of the database, at the version of the app's clock, then
writes them into the index with a progress bar; articles the database no longer holds leave the
index. Workers may keep running: a change they apply that is newer than the snapshot stays.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from tqdm import tqdm

from examples.articles import NO_BLOG, Article, Clock, settings_from_environ
from tasks.builtin.search_index import SearchIndex


def snapshot(url: str) -> tuple[int, list[tuple[dict[str, str], dict[str, Any]]]]:
    """The version of the app's clock, and every article (its parent, its record) at it."""
    engine = create_engine(url)
    with Session(engine) as session:
        if engine.dialect.name == "sqlite":
            # pysqlite would begin no transaction for reads: two queries, two snapshots.
            session.connection().exec_driver_sql("BEGIN")
        clock = session.get(Clock, 1)
        as_of = clock.value if clock else 0
        articles = session.scalars(select(Article).order_by(Article.blog_id, Article.id))
        records = [
            (
                {"blog_id": article.blog_id} if article.blog_id != NO_BLOG else {},
                article.as_record(),
            )
            for article in articles
        ]
        session.rollback()
    engine.dispose()
    return as_of, records


def main(argv: list[str] | None = None) -> int:
    defaults = settings_from_environ()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default=defaults["sqlalchemy.url"], help="SQLAlchemy URL")
    parser.add_argument("--index", default=defaults["search.index"], help="the index file")
    arguments = parser.parse_args(argv)
    as_of, records = snapshot(arguments.database)
    index = SearchIndex(arguments.index)
    with tqdm(total=len(records), unit=" articles", desc="reindexing", file=sys.stderr) as bar:
        count = index.reindex("article", records, as_of, on_progress=bar.update)
    print(f"{count} articles indexed in {arguments.index}, as of version {as_of}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
