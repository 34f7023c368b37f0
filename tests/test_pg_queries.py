"""The PostgreSQL queries file answers every name the SQLite one has, and its extra
names are its own machinery (the row-locking forms, the transaction's clock and lock,
migrations): the engine names a query once and runs on either backend."""

from __future__ import annotations

from orchestrator import store
from orchestrator.postgres import QUERIES as PG


def test_every_sqlite_query_has_a_postgresql_twin():
    assert set(store.QUERIES) - set(PG) == set()


def test_locked_forms_shadow_existing_queries():
    locked = {name.removesuffix("__locked") for name in PG if name.endswith("__locked")}
    assert locked <= set(store.QUERIES)
    # what a write transaction decides from: the row it changes, the best claimable one,
    # the expired leases, the children it fences, the ancestors it checks
    assert {"item", "next_claimable", "expired_leases", "running_children",
            "ancestor"} <= locked


def test_postgresql_queries_use_psycopg_parameters_only():
    for name, sql in PG.items():
        assert ":id" not in sql and "?" not in sql.replace("%(", ""), name


def test_no_postgresql_query_ends_in_a_comment():
    # A comment between two queries belongs to the one before it; the store sends some
    # queries with more SQL appended ("; COMMIT"), which a trailing comment would swallow.
    for name, sql in PG.items():
        assert not sql.splitlines()[-1].lstrip().startswith("--"), name
