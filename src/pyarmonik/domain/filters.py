"""Filters, sorting and paging of List* queries (reference §6), independent of the wire.

A filter is in disjunctive normal form, like on the wire: an OR of AND-groups of conditions on
the columns of a row (see records.py). It is evaluated either in Python (`matches`) or in SQL
(`to_sql`, through a `SqlDialect`); both follow SQL semantics and must agree on every row:
a NULL (None) column value makes any comparison false, NOT_EQUAL and NOT_CONTAINS included.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from pyarmonik.domain.errors import InvalidArgument


class Kind(Enum):
    """Type of the compared column; OPTION is a string-valued key of the `opt_options` map."""

    STRING = "string"
    NUMBER = "number"
    DATE = "date"
    STATUS = "status"
    BOOLEAN = "boolean"
    DURATION = "duration"
    ARRAY = "array"
    OPTION = "option"
    # The session (`session_id` column) was created by this user (session isolation). SQL
    # only: it reads the sessions table.
    SESSION_OWNER = "session owner"


class Op(Enum):
    """Comparison operator of a condition (comparisons have their SQL spelling as value)."""

    EQ = "="
    NE = "<>"
    CONTAINS = "contains"
    NOT_CONTAINS = "not contains"
    STARTS_WITH = "starts with"
    ENDS_WITH = "ends with"
    LT = "<"
    LE = "<="
    GE = ">="
    GT = ">"


_ORDERED = frozenset({Op.EQ, Op.NE, Op.LT, Op.LE, Op.GE, Op.GT})
_TEXT = frozenset({Op.EQ, Op.NE, Op.CONTAINS, Op.NOT_CONTAINS, Op.STARTS_WITH, Op.ENDS_WITH})
ALLOWED_OPS: Mapping[Kind, frozenset[Op]] = {
    Kind.STRING: _TEXT,
    Kind.OPTION: _TEXT,
    Kind.NUMBER: _ORDERED,
    Kind.DATE: _ORDERED,
    Kind.DURATION: _ORDERED,
    Kind.STATUS: frozenset({Op.EQ, Op.NE}),
    Kind.BOOLEAN: frozenset({Op.EQ}),
    Kind.ARRAY: frozenset({Op.CONTAINS, Op.NOT_CONTAINS}),
    Kind.SESSION_OWNER: frozenset({Op.EQ}),
}

OPTIONS_COLUMN = "opt_options"


@dataclass(frozen=True)
class Condition:
    """`column <op> value`; for Kind.OPTION, `opt_options[key] <op> value`."""

    column: str
    kind: Kind
    op: Op
    value: Any
    key: str = ""

    def __post_init__(self) -> None:
        if self.op not in ALLOWED_OPS[self.kind]:
            raise InvalidArgument(f"operator {self.op.name} does not apply to a {self.kind.value}")


Filter = tuple[tuple[Condition, ...], ...]
"""OR of AND-groups. An empty OR matches everything, as on the wire; so does an empty group."""

# Limits of a filter, checked before any query (InvalidArgument beyond them). Conditions: each
# binds one SQL parameter (PostgreSQL takes 32,767 per statement). Text: a pattern of SQLite's
# GLOB may hold 50,000 bytes, and escaping can triple a value.
MAX_FILTER_CONDITIONS = 10_000
MAX_FILTER_TEXT_BYTES = 8 * 1024


def check_condition_count(count: int) -> None:
    """Raise InvalidArgument when a filter of `count` conditions is beyond the limit."""
    if count > MAX_FILTER_CONDITIONS:
        raise InvalidArgument(
            f"a filter holds at most {MAX_FILTER_CONDITIONS} conditions (this one {count})"
        )


def check_limits(f: Filter) -> None:
    """Raise InvalidArgument when `f` is beyond MAX_FILTER_CONDITIONS or holds a text (value
    or option key) over MAX_FILTER_TEXT_BYTES."""
    check_condition_count(sum(len(group) for group in f))
    for group in f:
        for c in group:
            for text in (c.value, c.key):
                if (
                    isinstance(text, str)
                    and len(text.encode(errors="replace")) > MAX_FILTER_TEXT_BYTES
                ):
                    raise InvalidArgument(
                        f"a text in a filter holds at most {MAX_FILTER_TEXT_BYTES} bytes"
                        f" (one on {c.column} holds {len(text.encode(errors='replace'))})"
                    )


MATCH_ALL: Filter = ()


def and_filters(a: Filter, b: Filter) -> Filter:
    """a AND b, distributed back into disjunctive normal form."""
    if not a:
        return b
    if not b:
        return a
    return tuple(ga + gb for ga in a for gb in b)


# ---------------------------------------------------------------- Python evaluation

# Keys holding NUL cannot be written in SQL text nor stored in PostgreSQL jsonb: they never
# match, in Python too, so that both evaluations agree.
_UNADDRESSABLE = "\0"

_PY_OPS: Mapping[Op, Callable[[Any, Any], bool]] = {
    Op.EQ: operator.eq,
    Op.NE: operator.ne,
    Op.LT: operator.lt,
    Op.LE: operator.le,
    Op.GE: operator.ge,
    Op.GT: operator.gt,
    Op.CONTAINS: lambda cell, v: v in cell,
    Op.NOT_CONTAINS: lambda cell, v: v not in cell,
    Op.STARTS_WITH: lambda cell, v: cell.startswith(v),
    Op.ENDS_WITH: lambda cell, v: cell.endswith(v),
}


def _cell(column: str, key: str, is_option: bool, row: Mapping[str, Any]) -> Any:
    value = row.get(column)
    if not is_option:
        return value
    if not isinstance(value, Mapping) or _UNADDRESSABLE in key:
        return None
    return value.get(key)


def _holds(c: Condition, row: Mapping[str, Any]) -> bool:
    if c.kind is Kind.SESSION_OWNER:
        raise ValueError("a session owner condition is evaluated by the database only")
    cell = _cell(c.column, c.key, c.kind is Kind.OPTION, row)
    return cell is not None and _PY_OPS[c.op](cell, c.value)


def matches(f: Filter, row: Mapping[str, Any]) -> bool:
    """Whether `row` passes filter `f`, with the same NULL semantics as `to_sql`."""
    return not f or any(all(_holds(c, row) for c in group) for group in f)


# ---------------------------------------------------------------- SQL


class SqlDialect(Protocol):
    """What differs between the SQL databases; every `?` in what it returns is one parameter."""

    # Expression: the database's time now, in seconds since the epoch (heartbeats written by
    # many hosts are compared on this one clock).
    clock: str
    # Whether Repository.insert logs new tasks and results in `changes` (SQLite), rather than
    # the database's own triggers (PostgreSQL's, which also notify listeners).
    logs_inserts: bool

    def json_text(self, column: str, key: str) -> str:
        """Expression: text at `key` of the JSON object in `column`, NULL when absent."""
        ...

    def array_contains(self, column: str) -> str:
        """Condition with one `?`: the JSON array of strings in `column` holds the value."""
        ...

    def array_length(self, column: str) -> str:
        """Expression: the length of the JSON array in `column`."""
        ...

    def off_index(self, column: str) -> str:
        """`column` as an operand its indexes must not serve: beside the key, rows are found
        by key (SQLite plans without statistics and would walk an index of `status` past
        every SUBMITTED task to find the few asked for)."""
        ...

    def parameter_type(self, value: Any) -> str:
        """The SQL type a parameter holding this scalar is cast to where nothing else types it
        (a VALUES list)."""
        ...

    def text_match(self, expr: str, op: Op, value: str) -> tuple[str, str]:
        """Case-sensitive CONTAINS / STARTS_WITH / ENDS_WITH of `value` in `expr`.

        Returns the condition (one `?`) and the parameter to bind, i.e. the escaped pattern.
        """
        ...


def _pattern(op: Op, escaped: str, wildcard: str) -> str:
    if op is Op.CONTAINS:
        return f"{wildcard}{escaped}{wildcard}"
    if op is Op.STARTS_WITH:
        return f"{escaped}{wildcard}"
    if op is Op.ENDS_WITH:
        return f"{wildcard}{escaped}"
    raise ValueError(f"{op} is not a pattern operator")


# SQL types of scalar parameters, by Python type (bool before int: a bool is an int).
SQLITE_TYPES: dict[type, str] = {
    bool: "INTEGER",
    int: "INTEGER",
    float: "REAL",
    str: "TEXT",
    bytes: "BLOB",
}
POSTGRES_TYPES: dict[type, str] = {
    bool: "BOOLEAN",
    int: "BIGINT",
    float: "DOUBLE PRECISION",
    str: "TEXT",
    bytes: "BYTEA",
}


def _parameter_type(value: Any, types: dict[type, str]) -> str:
    for kind, name in types.items():
        if isinstance(value, kind):
            return name
    raise TypeError(f"no SQL parameter type for {type(value).__name__}")


class SqliteDialect:
    """SQLite ≥ 3.38 (JSON functions built in)."""

    # SQLite's LIKE ignores case, GLOB does not; GLOB's wildcards are made literal with [...].
    _GLOB_ESCAPES = str.maketrans({"*": "[*]", "?": "[?]", "[": "[[]"})
    clock = "((julianday('now') - 2440587.5) * 86400.0)"
    logs_inserts = True

    @staticmethod
    def off_index(column: str) -> str:
        return f"+{column}"  # SQLite's documented way to keep a term off the indexes

    def json_text(self, column: str, key: str) -> str:
        # Not json_extract(col, '$."key"'): SQLite 3.40 neither unescapes \" in a path nor
        # decodes \uXXXX in stored keys, so some keys could not be found. json_each decodes.
        if _UNADDRESSABLE in key:
            return "NULL"
        literal = "'" + key.replace("'", "''") + "'"
        return f"(SELECT value FROM json_each({column}) WHERE key = {literal})"

    def array_contains(self, column: str) -> str:
        return f"EXISTS (SELECT 1 FROM json_each({column}) WHERE value = ?)"

    def array_length(self, column: str) -> str:
        return f"json_array_length({column})"

    def parameter_type(self, value: Any) -> str:
        return _parameter_type(value, SQLITE_TYPES)

    def text_match(self, expr: str, op: Op, value: str) -> tuple[str, str]:
        return f"({expr} GLOB ?)", _pattern(op, value.translate(self._GLOB_ESCAPES), "*")


class PostgresDialect:
    """PostgreSQL ≥ 12 with JSON columns of type `jsonb`; placeholders stay `?`.

    The adapter numbers the placeholders, so no literal `?` may appear in the SQL text.
    """

    _LIKE_ESCAPES = str.maketrans({"\\": "\\\\", "%": "\\%", "_": "\\_"})
    clock = "(extract(epoch FROM clock_timestamp())::double precision)"
    logs_inserts = False

    @staticmethod
    def off_index(column: str) -> str:
        return column  # its planner keeps statistics: the key wins by itself

    def json_text(self, column: str, key: str) -> str:
        if _UNADDRESSABLE in key:
            return "NULL"
        # A U&'' literal with every unusual character escaped: no quote can end it early and no
        # literal `?` reaches the adapter that rewrites placeholders. (U&'' needs
        # standard_conforming_strings, on by default since PostgreSQL 9.1.)
        body = "".join(
            c if c.isascii() and (c.isalnum() or c in " _-.:/") else f"\\+{ord(c):06X}" for c in key
        )
        return f"({column} ->> U&'{body}')"

    def array_contains(self, column: str) -> str:
        return f"({column} @> jsonb_build_array(?::text))"

    def array_length(self, column: str) -> str:
        return f"jsonb_array_length({column})"

    def parameter_type(self, value: Any) -> str:
        return _parameter_type(value, POSTGRES_TYPES)

    def text_match(self, expr: str, op: Op, value: str) -> tuple[str, str]:
        # PostgreSQL's LIKE is case-sensitive; `\` is its escape character once stated.
        pattern = _pattern(op, value.translate(self._LIKE_ESCAPES), "%")
        return f"({expr} LIKE ? ESCAPE '\\')", pattern


SQLITE_DIALECT = SqliteDialect()
POSTGRES_DIALECT = PostgresDialect()

_PATTERN_OPS = frozenset({Op.CONTAINS, Op.STARTS_WITH, Op.ENDS_WITH})


def _expr(column: str, key: str, is_option: bool, dialect: SqlDialect) -> str:
    return dialect.json_text(column, key) if is_option else column


def _condition_sql(c: Condition, dialect: SqlDialect, params: list[Any]) -> str:
    if c.kind is Kind.SESSION_OWNER:
        params.append(c.value)
        return f"{c.column} IN (SELECT session_id FROM sessions WHERE created_by_user = ?)"
    if c.kind is Kind.ARRAY:
        params.append(c.value)
        contains = dialect.array_contains(c.column)
        if c.op is Op.CONTAINS:
            return contains
        # json_each(NULL) is empty, so NOT EXISTS alone would be true on a NULL column.
        return f"({c.column} IS NOT NULL AND NOT {contains})"
    expr = _expr(c.column, c.key, c.kind is Kind.OPTION, dialect)
    if c.op in _PATTERN_OPS or c.op is Op.NOT_CONTAINS:
        # NOT (NULL) stays NULL, so NOT_CONTAINS on NULL is false without a guard.
        positive = Op.CONTAINS if c.op is Op.NOT_CONTAINS else c.op
        sql, pattern = dialect.text_match(expr, positive, c.value)
        params.append(pattern)
        return f"NOT {sql}" if c.op is Op.NOT_CONTAINS else sql
    params.append(c.value)
    return f"{expr} {c.op.value} ?"


def _balanced(operator: str, terms: list[str]) -> str:
    """`terms` joined by `operator` as a balanced tree of parentheses: a flat chain of a few
    thousand terms is deeper than SQLite's parser accepts (1,000)."""
    if len(terms) == 1:
        return terms[0]
    middle = len(terms) // 2
    return (
        f"({_balanced(operator, terms[:middle])} {operator} {_balanced(operator, terms[middle:])})"
    )


def to_sql(f: Filter, dialect: SqlDialect) -> tuple[str, list[Any]]:
    """WHERE fragment (parenthesised, `?` placeholders) and its parameters, for filter `f`."""
    if not f:
        return "1=1", []
    params: list[Any] = []
    groups = [
        "(" + _balanced("AND", [_condition_sql(c, dialect, params) for c in group]) + ")"
        if group
        else "1=1"
        for group in f
    ]
    return "(" + _balanced("OR", groups) + ")", params


# ---------------------------------------------------------------- sorting and paging


@dataclass(frozen=True)
class Sort:
    """Order by `column` (or by `opt_options[key]` when `key` is set)."""

    column: str
    descending: bool = False
    key: str = ""


def order_by_sql(sort: Sort, dialect: SqlDialect, tiebreak: str) -> str:
    """ORDER BY fragment; NULLs come first when ascending, and ties follow `tiebreak`.

    The tiebreak (the primary key) goes in the sort's direction, which keeps pages stable and
    lets Python reproduce the order with a single reversed sort (see `sort_key`). NULLS
    FIRST/LAST are explicit because PostgreSQL's default is the opposite of SQLite's.
    """
    expr = _expr(sort.column, sort.key, bool(sort.key), dialect)
    direction = "DESC NULLS LAST" if sort.descending else "ASC NULLS FIRST"
    return f"{expr} {direction}, {tiebreak} {'DESC' if sort.descending else 'ASC'}"


def sort_key(sort: Sort, tiebreak: str = "") -> Callable[[Mapping[str, Any]], Any]:
    """Key ordering rows as `order_by_sql` does: `sorted(rows, key=..., reverse=descending)`."""

    def key(row: Mapping[str, Any]) -> Any:
        value = _cell(sort.column, sort.key, bool(sort.key), row)
        ranked = (0,) if value is None else (1, value)
        return (ranked, row[tiebreak]) if tiebreak else ranked

    return key


@dataclass(frozen=True)
class ListQuery:
    """One page of a filtered, sorted listing; pages are 0-based."""

    filter: Filter = MATCH_ALL
    sort: Sort | None = None
    page: int = 0
    page_size: int = 100
