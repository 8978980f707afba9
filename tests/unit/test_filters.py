"""Domain filters: Python evaluation and SQL (SQLite and PostgreSQL) must agree on every row."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyarmonik.domain.errors import InvalidArgument
from pyarmonik.domain.filters import (
    ALLOWED_OPS,
    MATCH_ALL,
    MAX_FILTER_CONDITIONS,
    MAX_FILTER_TEXT_BYTES,
    POSTGRES_DIALECT,
    SQLITE_DIALECT,
    Condition,
    Filter,
    Kind,
    ListQuery,
    Op,
    Sort,
    SqlDialect,
    and_filters,
    check_limits,
    matches,
    order_by_sql,
    sort_key,
    to_sql,
)

Row = dict[str, Any]
JSON_COLUMNS = ("arr", "opt_options")
QUOTED_KEY = "q'\"\\?.$[0]"

# s: string, n: number, d: date, u: duration, st: status, b: boolean, arr: array of strings.
ROWS: list[Row] = [
    {
        "id": "r1",
        "s": "abc",
        "n": 1,
        "d": 10.5,
        "u": 1.0,
        "st": 1,
        "b": True,
        "arr": ["a", "b"],
        "opt_options": {"k": "v", QUOTED_KEY: "quoted", "K": "upper"},
    },
    {
        "id": "r2",
        "s": "ABC",
        "n": 2,
        "d": 20.0,
        "u": 2.5,
        "st": 2,
        "b": False,
        "arr": [],
        "opt_options": {},
    },
    {
        "id": "r3",
        "s": "50%_off",
        "n": -5,
        "d": None,
        "u": None,
        "st": 4,
        "b": True,
        "arr": ["50%", "x_y"],
        "opt_options": {"k": "50%_off"},
    },
    {k: None for k in ("s", "n", "d", "u", "st", "b", "arr", "opt_options")} | {"id": "r4"},
    {
        "id": "r5",
        "s": "a\\b*c?[d]",
        "n": 0,
        "d": 0.0,
        "u": 0.0,
        "st": 1,
        "b": False,
        "arr": ["a\\b"],
        "opt_options": {"k": "a\\b*c?[d]", "é": "unicode"},
    },
    {
        "id": "r6",
        "s": "",
        "n": 3,
        "d": 30.0,
        "u": 3.0,
        "st": 2,
        "b": True,
        "arr": ["A"],
        "opt_options": {"k": ""},
    },
    {
        "id": "r7",
        "s": "xabcx",
        "n": 1,
        "d": 10.5,
        "u": 1.0,
        "st": 4,
        "b": False,
        "arr": ["b"],
        "opt_options": {"other": "v"},
    },
]
ALL = {r["id"] for r in ROWS}


def ids(*names: str) -> set[str]:
    return {f"r{n}" for n in names}


def one(column: str, kind: Kind, op: Op, value: Any, key: str = "") -> Filter:
    return ((Condition(column, kind, op, value, key),),)


def opt(op: Op, value: str, key: str = "k") -> Filter:
    return one("opt_options", Kind.OPTION, op, value, key)


S, N, D, U, ST, B, A = (
    ("s", Kind.STRING),
    ("n", Kind.NUMBER),
    ("d", Kind.DATE),
    ("u", Kind.DURATION),
    ("st", Kind.STATUS),
    ("b", Kind.BOOLEAN),
    ("arr", Kind.ARRAY),
)

# (filter, ids it selects in ROWS): each documents one rule and is checked in Python and SQL.
CASES: list[tuple[Filter, set[str]]] = [
    (MATCH_ALL, ALL),
    (((),), ALL),  # an empty AND-group is true
    (one(*S, Op.EQ, "abc"), ids(1)),  # case-sensitive
    (one(*S, Op.NE, "abc"), ids(2, 3, 5, 6, 7)),  # NULL is not "different"
    (one(*S, Op.CONTAINS, "abc"), ids(1, 7)),
    (one(*S, Op.CONTAINS, "b"), ids(1, 5, 7)),
    (one(*S, Op.CONTAINS, "B"), ids(2)),
    (one(*S, Op.CONTAINS, ""), ALL - ids(4)),
    (one(*S, Op.CONTAINS, "%"), ids(3)),  # wildcards of LIKE and GLOB are literal
    (one(*S, Op.CONTAINS, "_"), ids(3)),
    (one(*S, Op.CONTAINS, "\\"), ids(5)),
    (one(*S, Op.CONTAINS, "*"), ids(5)),
    (one(*S, Op.CONTAINS, "?"), ids(5)),
    (one(*S, Op.CONTAINS, "[d]"), ids(5)),
    (one(*S, Op.CONTAINS, "[d"), ids(5)),
    (one(*S, Op.CONTAINS, "d]"), ids(5)),
    (one(*S, Op.NOT_CONTAINS, "abc"), ids(2, 3, 5, 6)),
    (one(*S, Op.NOT_CONTAINS, "%"), ALL - ids(3, 4)),
    (one(*S, Op.STARTS_WITH, "a"), ids(1, 5)),
    (one(*S, Op.STARTS_WITH, "A"), ids(2)),
    (one(*S, Op.STARTS_WITH, "50%_"), ids(3)),
    (one(*S, Op.STARTS_WITH, "5_"), set()),
    (one(*S, Op.STARTS_WITH, ""), ALL - ids(4)),
    (one(*S, Op.ENDS_WITH, "_off"), ids(3)),
    (one(*S, Op.ENDS_WITH, "?[d]"), ids(5)),
    (one(*S, Op.ENDS_WITH, "bc"), ids(1)),
    (one(*S, Op.ENDS_WITH, ""), ALL - ids(4)),
    (one(*N, Op.EQ, 1), ids(1, 7)),
    (one(*N, Op.NE, 1), ids(2, 3, 5, 6)),
    (one(*N, Op.LT, 1), ids(3, 5)),
    (one(*N, Op.LE, 1), ids(1, 3, 5, 7)),
    (one(*N, Op.GE, 2), ids(2, 6)),
    (one(*N, Op.GT, -5), ids(1, 2, 5, 6, 7)),
    (one(*D, Op.EQ, 10.5), ids(1, 7)),
    (one(*D, Op.NE, 10.5), ids(2, 5, 6)),
    (one(*D, Op.LT, 20.0), ids(1, 5, 7)),
    (one(*D, Op.GE, 20.0), ids(2, 6)),
    (one(*U, Op.LE, 1.0), ids(1, 5, 7)),
    (one(*U, Op.GT, 1.0), ids(2, 6)),
    (one(*ST, Op.EQ, 1), ids(1, 5)),
    (one(*ST, Op.NE, 1), ids(2, 3, 6, 7)),
    (one(*B, Op.EQ, True), ids(1, 3, 6)),
    (one(*B, Op.EQ, False), ids(2, 5, 7)),
    (one(*A, Op.CONTAINS, "a"), ids(1)),
    (one(*A, Op.CONTAINS, "A"), ids(6)),
    (one(*A, Op.CONTAINS, "50%"), ids(3)),
    (one(*A, Op.CONTAINS, "5%"), set()),  # element equality, no pattern
    (one(*A, Op.CONTAINS, "x_y"), ids(3)),
    (one(*A, Op.CONTAINS, "a\\b"), ids(5)),
    (one(*A, Op.NOT_CONTAINS, "a"), ids(2, 3, 5, 6, 7)),  # [] contains nothing; NULL is out
    (one(*A, Op.NOT_CONTAINS, "b"), ids(2, 3, 5, 6)),
    (opt(Op.EQ, "v"), ids(1)),
    (opt(Op.NE, "v"), ids(3, 5, 6)),  # a missing key is NULL
    (opt(Op.EQ, "v", key="other"), ids(7)),
    (opt(Op.EQ, "upper", key="K"), ids(1)),  # keys are case-sensitive
    (opt(Op.EQ, "quoted", key=QUOTED_KEY), ids(1)),
    (opt(Op.EQ, "unicode", key="é"), ids(5)),
    (opt(Op.EQ, "x", key="k' OR 1=1 --"), set()),
    (opt(Op.EQ, "v", key="k\0"), set()),  # NUL cannot be addressed in SQL: never matches
    (opt(Op.CONTAINS, "%"), ids(3)),
    (opt(Op.CONTAINS, "?[d]"), ids(5)),
    (opt(Op.NOT_CONTAINS, "v"), ids(3, 5, 6)),
    (opt(Op.STARTS_WITH, ""), ids(1, 3, 5, 6)),
    (opt(Op.ENDS_WITH, "_off"), ids(3)),
    (opt(Op.NOT_CONTAINS, "x", key="missing"), set()),
    # OR of AND-groups
    (one(*N, Op.EQ, 1) + one(*B, Op.EQ, False), ids(1, 2, 5, 7)),
    (((Condition(*N, Op.EQ, 1), Condition(*B, Op.EQ, False)),), ids(7)),
    (and_filters(one(*S, Op.CONTAINS, "a") + one(*N, Op.LT, 0), one(*ST, Op.EQ, 4)), ids(3, 7)),
    (and_filters(MATCH_ALL, one(*ST, Op.EQ, 4)), ids(3, 7)),
    ((*one(*ST, Op.NE, 2), ()), ALL),
]


class SqliteDb:
    """Rows in an in-memory SQLite table; JSON columns hold JSON text."""

    dialect: SqlDialect = SQLITE_DIALECT

    def __init__(self, ensure_ascii: bool) -> None:
        self.ensure_ascii = ensure_ascii
        self.conn = sqlite3.connect(":memory:")
        self.conn.execute(
            "CREATE TABLE t (id TEXT PRIMARY KEY, s TEXT, n INTEGER, d REAL, u REAL,"
            " st INTEGER, b INTEGER, arr TEXT, opt_options TEXT)"
        )

    def _encode(self, row: Row) -> tuple[Any, ...]:
        return tuple(
            json.dumps(row[c], ensure_ascii=self.ensure_ascii)
            if c in JSON_COLUMNS and row[c] is not None
            else row[c]
            for c in COLUMNS
        )

    def reset(self, rows: Sequence[Row]) -> None:
        self.conn.execute("DELETE FROM t")
        self.conn.executemany(
            f"INSERT INTO t VALUES ({', '.join('?' * len(COLUMNS))})", map(self._encode, rows)
        )

    def select(self, where: str, params: list[Any]) -> set[str]:
        return {r[0] for r in self.conn.execute(f"SELECT id FROM t WHERE {where}", params)}

    def ordered(self, order_by: str) -> list[str]:
        return [r[0] for r in self.conn.execute(f"SELECT id FROM t ORDER BY {order_by}")]

    def close(self) -> None:
        self.conn.close()


def numbered(sql: str) -> str:
    """`?` placeholders to PostgreSQL's `$n`, as the PostgreSQL adapter does."""
    counter = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


class PostgresDb:
    """Rows in a temporary PostgreSQL table with jsonb columns (asyncpg, own event loop)."""

    dialect: SqlDialect = POSTGRES_DIALECT

    def __init__(self, conn: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.conn, self.loop = conn, loop
        self._run(
            conn.execute(
                "CREATE TEMPORARY TABLE t (id text PRIMARY KEY, s text, n bigint,"
                " d double precision, u double precision, st integer, b boolean,"
                " arr jsonb, opt_options jsonb)"
            )
        )

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def reset(self, rows: Sequence[Row]) -> None:
        self._run(self.conn.execute("DELETE FROM t"))
        values = [
            tuple(
                json.dumps(r[c]) if c in JSON_COLUMNS and r[c] is not None else r[c]
                for c in COLUMNS
            )
            for r in rows
        ]
        placeholders = ", ".join(f"${i}" for i in range(1, len(COLUMNS) + 1))
        self._run(self.conn.executemany(f"INSERT INTO t VALUES ({placeholders})", values))

    def select(self, where: str, params: list[Any]) -> set[str]:
        assert where.count("?") == len(params), "a literal ? would be renumbered by the adapter"
        sql = numbered(f"SELECT id FROM t WHERE {where}")
        return {r["id"] for r in self._run(self.conn.fetch(sql, *params))}

    def ordered(self, order_by: str) -> list[str]:
        assert "?" not in order_by
        return [
            r["id"] for r in self._run(self.conn.fetch(f"SELECT id FROM t ORDER BY {order_by}"))
        ]

    def close(self) -> None:
        self._run(self.conn.close())
        self.loop.close()


COLUMNS = ("id", "s", "n", "d", "u", "st", "b", "arr", "opt_options")
POSTGRES_DSN = os.environ.get(
    "PYARMONIK_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


def connect_postgres() -> PostgresDb:
    import asyncpg

    loop = asyncio.new_event_loop()
    try:
        conn = loop.run_until_complete(asyncpg.connect(POSTGRES_DSN, timeout=5))
    except (OSError, asyncpg.PostgresError) as error:
        loop.close()
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {POSTGRES_DSN} is required in CI: {error!r}")
        pytest.skip(f"PostgreSQL at {POSTGRES_DSN} is unreachable: {error!r}")
    return PostgresDb(conn, loop)


@pytest.fixture(scope="module", params=["sqlite", "sqlite-utf8", "postgres"])
def db(request: pytest.FixtureRequest) -> Iterator[SqliteDb | PostgresDb]:
    database = (
        connect_postgres() if request.param == "postgres" else SqliteDb(request.param == "sqlite")
    )
    yield database
    database.close()


def python_ids(f: Filter, rows: Sequence[Row]) -> set[str]:
    return {r["id"] for r in rows if matches(f, r)}


@pytest.mark.parametrize(("f", "expected"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_python_and_sql_select_the_expected_rows(
    db: SqliteDb | PostgresDb, f: Filter, expected: set[str]
) -> None:
    db.reset(ROWS)
    assert python_ids(f, ROWS) == expected
    assert db.select(*to_sql(f, db.dialect)) == expected


def test_sql_fragment_composes_with_other_conditions(db: SqliteDb | PostgresDb) -> None:
    db.reset(ROWS)
    # (n = 1 OR b = false) must stay grouped when ANDed with a prefix condition.
    where, params = to_sql(one(*N, Op.EQ, 1) + one(*B, Op.EQ, False), db.dialect)
    assert db.select(f"id <> ? AND {where}", ["r1", *params]) == ids(2, 5, 7)


SORTS = [
    Sort(column, descending, key)
    for column, key in [
        ("s", ""),
        ("n", ""),
        ("d", ""),
        ("st", ""),
        ("b", ""),
        ("opt_options", "k"),
    ]
    for descending in (False, True)
]


@pytest.mark.parametrize("sort", SORTS, ids=str)
def test_sql_order_matches_python_order(db: SqliteDb | PostgresDb, sort: Sort) -> None:
    db.reset(ROWS)
    expected = [r["id"] for r in sorted(ROWS, key=sort_key(sort, "id"), reverse=sort.descending)]
    assert db.ordered(order_by_sql(sort, db.dialect, "id")) == expected


def test_nulls_come_first_ascending_and_last_descending() -> None:
    ascending = sorted(ROWS, key=sort_key(Sort("d"), "id"))
    assert [r["id"] for r in ascending[:2]] == ["r3", "r4"]
    descending = sorted(ROWS, key=sort_key(Sort("d", True), "id"), reverse=True)
    assert [r["id"] for r in descending[-2:]] == ["r4", "r3"]


# ---------------------------------------------------------------- property: SQL == Python

ALPHABET = "aAb%_\\*?[]'\"é "
texts = st.text(ALPHABET, max_size=4)
keys = st.text("k'\"?\\é.", max_size=2)  # few keys, so that conditions hit stored ones
dates = st.sampled_from([0.0, 0.5, 1.0, 2.5])


def nullable(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


rows_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "s": nullable(texts),
            "n": nullable(st.integers(-2, 2)),
            "d": nullable(dates),
            "u": nullable(dates),
            "st": nullable(st.integers(0, 3)),
            "b": nullable(st.booleans()),
            "arr": nullable(st.lists(texts, max_size=3)),
            "opt_options": nullable(st.dictionaries(keys, texts, max_size=3)),
        }
    ),
    max_size=6,
).map(lambda rows: [{"id": f"r{i}", **r} for i, r in enumerate(rows)])

VALUES: Mapping[Kind, tuple[str, st.SearchStrategy[Any]]] = {
    Kind.STRING: ("s", texts),
    Kind.NUMBER: ("n", st.integers(-2, 2)),
    Kind.DATE: ("d", dates),
    Kind.DURATION: ("u", dates),
    Kind.STATUS: ("st", st.integers(0, 3)),
    Kind.BOOLEAN: ("b", st.booleans()),
    Kind.ARRAY: ("arr", texts),
    Kind.OPTION: ("opt_options", texts),
}


@st.composite
def conditions(draw: st.DrawFn) -> Condition:
    kind = draw(st.sampled_from(list(VALUES)))  # a session owner needs the sessions table
    column, values = VALUES[kind]
    op = draw(st.sampled_from(sorted(ALLOWED_OPS[kind], key=lambda o: o.name)))
    key = draw(keys) if kind is Kind.OPTION else ""
    return Condition(column, kind, op, draw(values), key)


filters = st.lists(st.lists(conditions(), max_size=3).map(tuple), max_size=3).map(tuple)
sorts = st.builds(
    Sort,
    st.sampled_from(["s", "n", "d", "u", "st", "b"]),
    st.booleans(),
) | st.builds(Sort, st.just("opt_options"), st.booleans(), keys.filter(bool))  # "" = no key

PROPERTY = settings(max_examples=150, deadline=None)


@PROPERTY
@given(rows=rows_strategy, f=filters)
def test_sql_and_python_agree_on_random_filters(
    db: SqliteDb | PostgresDb, rows: list[Row], f: Filter
) -> None:
    db.reset(rows)
    assert db.select(*to_sql(f, db.dialect)) == python_ids(f, rows)


@PROPERTY
@given(rows=rows_strategy, sort=sorts)
def test_sql_and_python_agree_on_random_sorts(
    db: SqliteDb | PostgresDb, rows: list[Row], sort: Sort
) -> None:
    db.reset(rows)
    expected = [r["id"] for r in sorted(rows, key=sort_key(sort, "id"), reverse=sort.descending)]
    assert db.ordered(order_by_sql(sort, db.dialect, "id")) == expected


# ---------------------------------------------------------------- pure functions


def test_match_all_is_true_sql() -> None:
    assert to_sql(MATCH_ALL, SQLITE_DIALECT) == ("1=1", [])
    assert matches(MATCH_ALL, {})


def test_and_filters_distributes_and_keeps_match_all_neutral() -> None:
    a, b, c = (Condition("n", Kind.NUMBER, Op.EQ, i) for i in range(3))
    assert and_filters(MATCH_ALL, ((a,),)) == ((a,),)
    assert and_filters(((a,),), MATCH_ALL) == ((a,),)
    assert and_filters(((a,), (b,)), ((c,),)) == ((a, c), (b, c))


@pytest.mark.parametrize(
    ("kind", "op"),
    [
        (Kind.BOOLEAN, Op.NE),
        (Kind.STATUS, Op.LT),
        (Kind.ARRAY, Op.EQ),
        (Kind.NUMBER, Op.CONTAINS),
        (Kind.STRING, Op.LT),
    ],
)
def test_condition_rejects_operator_foreign_to_its_kind(kind: Kind, op: Op) -> None:
    with pytest.raises(InvalidArgument):
        Condition("c", kind, op, 1)


def test_user_text_never_reaches_sql_unescaped() -> None:
    evil = "x') OR 1=1 --?"
    for dialect in (SQLITE_DIALECT, POSTGRES_DIALECT):
        where, params = to_sql(opt(Op.CONTAINS, evil, key=evil) + one(*S, Op.EQ, evil), dialect)
        assert evil not in where
        assert len(params) == 2
    # PostgreSQL: the only `?` are placeholders, even for a key holding one.
    where, params = to_sql(opt(Op.EQ, "v", key="a?b"), POSTGRES_DIALECT)
    assert where.count("?") == len(params) == 1


def test_order_by_sql_shape() -> None:
    assert order_by_sql(Sort("n"), SQLITE_DIALECT, "id") == "n ASC NULLS FIRST, id ASC"
    assert order_by_sql(Sort("n", True), POSTGRES_DIALECT, "id") == "n DESC NULLS LAST, id DESC"
    assert "->>" in order_by_sql(Sort("opt_options", key="k"), POSTGRES_DIALECT, "id")


def test_list_query_defaults() -> None:
    query = ListQuery()
    assert (query.filter, query.sort, query.page, query.page_size) == (MATCH_ALL, None, 0, 100)


def test_filters_of_the_largest_size_run_in_sql(db: SqliteDb | PostgresDb) -> None:
    """A flat chain of this many terms is deeper than SQLite's parser takes: the SQL is a
    balanced tree, whatever the shape of the filter."""
    db.reset(ROWS)
    ids = sorted(r["id"] for r in ROWS)
    wide: Filter = tuple(
        (Condition("id", Kind.STRING, Op.EQ, ids[i % len(ids)]),)
        for i in range(MAX_FILTER_CONDITIONS)
    )
    deep: Filter = (
        tuple(Condition("id", Kind.STRING, Op.NE, f"x{i}") for i in range(MAX_FILTER_CONDITIONS)),
    )
    for f in (wide, deep):
        check_limits(f)
        assert db.select(*to_sql(f, db.dialect)) == python_ids(f, ROWS)


def test_filter_limits() -> None:
    over: Filter = ((Condition("s", Kind.STRING, Op.EQ, "a"),),) * (MAX_FILTER_CONDITIONS + 1)
    with pytest.raises(InvalidArgument, match=str(MAX_FILTER_CONDITIONS)):
        check_limits(over)
    longest = "é" * (MAX_FILTER_TEXT_BYTES // 2)  # two bytes each
    check_limits(((Condition("s", Kind.STRING, Op.CONTAINS, longest),),))
    for condition in (
        Condition("s", Kind.STRING, Op.CONTAINS, longest + "x"),
        Condition("opt_options", Kind.OPTION, Op.EQ, "v", key=longest + "x"),
    ):
        with pytest.raises(InvalidArgument, match=str(MAX_FILTER_TEXT_BYTES)):
            check_limits(((condition,),))


def test_the_longest_pattern_runs_in_sql(db: SqliteDb | PostgresDb) -> None:
    """Escaping triples wildcard characters; the longest value stays within SQLite's GLOB
    pattern limit (50,000 bytes)."""
    db.reset(ROWS)
    longest = "*?[" * (MAX_FILTER_TEXT_BYTES // 3)
    for op in (Op.CONTAINS, Op.NOT_CONTAINS, Op.STARTS_WITH, Op.ENDS_WITH):
        f: Filter = ((Condition("s", Kind.STRING, op, longest),),)
        check_limits(f)
        assert db.select(*to_sql(f, db.dialect)) == python_ids(f, ROWS)


def test_session_owner_is_sql_only() -> None:
    """Session isolation's condition reads the sessions table: SQL has it, Python refuses it."""
    owned = Condition("session_id", Kind.SESSION_OWNER, Op.EQ, "alice")
    sql, params = to_sql(((owned,),), SQLITE_DIALECT)
    assert sql == "((session_id IN (SELECT session_id FROM sessions WHERE created_by_user = ?)))"
    assert params == ["alice"]
    with pytest.raises(ValueError, match="database"):
        matches(((owned,),), {"session_id": "s"})
