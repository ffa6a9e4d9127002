"""A small, safe expression language for derived feature columns.

``amount / (balance + 1)``, ``log1p(amount)``, ``where(country == "US", 1, 0)``.
A column whose name is not an identifier (spaces, dots, other symbols) goes in backticks, as
in pandas' ``query``: ``log1p(`Production Budget`)``.
Expressions are parsed with :mod:`ast` and only a whitelist of node types, operators and
functions is accepted; nothing is ever passed to ``eval``. Evaluation is vectorised with
NumPy over a pandas DataFrame, so one row and a million rows go through the same code.

In: an expression string and a DataFrame. Out: a float64 NumPy array (NaN where undefined).
"""
from __future__ import annotations

import ast
import keyword
import operator
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd


class ExpressionError(ValueError):
    """The expression is not in the language; the message says what is not allowed."""


def _where(cond, a, b):
    return np.where(np.asarray(cond, dtype=bool), a, b)


def _isnull(x):
    return pd.isna(x).astype(np.float64) if isinstance(x, (pd.Series, np.ndarray)) else float(pd.isna(x))


def _fillna(x, value):
    arr = np.asarray(x, dtype=np.float64)
    return np.where(np.isnan(arr), value, arr)


FUNCTIONS: dict[str, tuple[Callable, int]] = {
    # name: (implementation, arity)
    "log": (np.log, 1),
    "log1p": (np.log1p, 1),
    "exp": (np.exp, 1),
    "sqrt": (np.sqrt, 1),
    "abs": (np.abs, 1),
    "floor": (np.floor, 1),
    "ceil": (np.ceil, 1),
    "sign": (np.sign, 1),
    "isnull": (_isnull, 1),
    "fillna": (_fillna, 2),
    "minimum": (np.minimum, 2),
    "maximum": (np.maximum, 2),
    "clip": (np.clip, 3),
    "where": (_where, 3),
}

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.Pow: operator.pow, ast.Mod: operator.mod,
    ast.FloorDiv: operator.floordiv,
}
_CMPOPS = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge, ast.Eq: operator.eq, ast.NotEq: operator.ne,
}
_MAX_LEN = 1000
_MAX_NODES = 200


@dataclass(frozen=True)
class Expression:
    source: str
    tree: ast.Expression
    columns: tuple[str, ...]

    def evaluate(self, df: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise ExpressionError(
                f"expression {self.source!r} uses column(s) {missing} that are not in the data"
            )
        with np.errstate(all="ignore"):
            out = _Evaluator(df).visit(self.tree.body)
        arr = np.array(out, dtype=np.float64)     # a copy: a bare column name is the input's (read-only) buffer
        if arr.ndim == 0:
            arr = np.full(len(df), float(arr))
        arr[~np.isfinite(arr)] = np.nan
        return arr


_QUOTED = "__col{}__"
# words joined by spaces or dots: what a column name with spaces or dots looks like unquoted
_SPACED = re.compile(r"[^\W\d]\w*(?:(?: +|\.)\w+)+")


def _unquote(source: str) -> tuple[str, dict[str, str]]:
    """``source`` with each backticked column name replaced by a placeholder identifier, and the
    placeholders' column names. Backticks inside string literals are left alone."""
    out, names, i, quote = [], {}, 0, None
    while i < len(source):
        ch = source[i]
        if quote:
            out.append(ch)
            if ch == "\\":
                out.append(source[i + 1:i + 2])
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "`":
            end = source.find("`", i + 1)
            if end < 0:
                raise ExpressionError(f"unclosed backtick in {source!r}: a column name goes between two "
                                      "backticks, e.g. `Production Budget`")
            name = source[i + 1:end]
            if not name.strip():
                raise ExpressionError(f"empty column name `` in {source!r}")
            key = next((k for k, v in names.items() if v == name), None) or _QUOTED.format(len(names))
            names[key] = name
            out.append(f" {key} ")
            i = end
        else:
            out.append(ch)
        i += 1
    return "".join(out), names


def _backtick_hint(source: str) -> str:
    """For a syntax error: the expression with its spaced or dotted names in backticks, if that
    parses (``log1p(Production Budget)`` -> ``log1p(`Production Budget`)``)."""
    def quote(m):
        words = re.split(r" +|\.", m.group(0))
        return m.group(0) if any(keyword.iskeyword(w) for w in words) else f"`{m.group(0)}`"
    fixed = _SPACED.sub(quote, source)
    if fixed == source:
        return ""
    try:
        parse(fixed)
    except ExpressionError:
        return ""
    names = ", ".join(f"`{n}`" for n in _unquote(fixed)[1].values())
    return (f"; a column name with spaces or dots goes in backticks: write {fixed!r} "
            f"(if {names} {'is a column' if names.count('`') == 2 else 'are columns'})")


def parse(source: str) -> Expression:
    """Parse and check an expression; raise ExpressionError naming the offending part."""
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError("expression is empty")
    if len(source) > _MAX_LEN:
        raise ExpressionError(f"expression is longer than {_MAX_LEN} characters")
    text, quoted = _unquote(source.strip())
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        hint = _backtick_hint(source)
        raise ExpressionError(f"syntax error in {source!r}: " + (
            f"invalid syntax{hint}" if hint else f"{e.msg} (column {e.offset})")) from None
    for node in ast.walk(tree):        # a backticked name is a column like any other from here on
        if isinstance(node, ast.Name) and node.id in quoted:
            node.id = quoted[node.id]
    nodes = list(ast.walk(tree))
    if len(nodes) > _MAX_NODES:
        raise ExpressionError(f"expression has more than {_MAX_NODES} parts")
    func_nodes = {id(n.func) for n in nodes if isinstance(n, ast.Call)}
    # strings are values to compare a column with (country == "US"), nothing else
    compared = {id(c) for n in nodes if isinstance(n, ast.Compare) for c in (n.left, *n.comparators)}
    columns: list[str] = []
    for node in nodes:
        if isinstance(node, ast.Name):
            if id(node) not in func_nodes and node.id not in columns:
                columns.append(node.id)
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                name = getattr(node.func, "id", ast.unparse(node.func))
                raise ExpressionError(
                    f"function {name!r} is not allowed in {source!r}; "
                    f"allowed: {', '.join(sorted(FUNCTIONS))}"
                )
            arity = FUNCTIONS[node.func.id][1]
            if len(node.args) != arity or node.keywords:
                raise ExpressionError(
                    f"{node.func.id}() takes {arity} positional argument(s) in {source!r}"
                )
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float, str)) or isinstance(node.value, bool):
                raise ExpressionError(f"constant {node.value!r} is not allowed in {source!r}")
            if isinstance(node.value, str) and id(node) not in compared:
                raise ExpressionError(
                    f"{node.value!r} in {source!r} is a string, which only a comparison takes (country == "
                    f"\"US\"); if {node.value!r} is a column, put its name in backticks: `{node.value}`")
        elif isinstance(node, ast.Attribute):
            dotted = ast.unparse(node)
            raise ExpressionError(f"Attribute is not allowed in {source!r}: if {dotted!r} is a column name with a "
                                  f"dot, put it in backticks: `{dotted}`")
        elif isinstance(node, ast.BinOp) and type(node.op) not in _BINOPS:
            raise ExpressionError(f"operator {type(node.op).__name__} is not allowed in {source!r}")
        elif isinstance(node, ast.Compare) and any(type(o) not in _CMPOPS for o in node.ops):
            raise ExpressionError(f"comparison not allowed in {source!r}")
        elif not isinstance(node, (ast.Expression, ast.Name, ast.Load, ast.Call, ast.Constant,
                                   ast.BinOp, ast.UnaryOp, ast.USub, ast.UAdd, ast.Not,
                                   ast.Compare, ast.BoolOp, ast.And, ast.Or,
                                   *_BINOPS, *_CMPOPS)):
            raise ExpressionError(
                f"{type(node).__name__} is not allowed in {source!r}: use column names, numbers, "
                "+ - * / ** %, comparisons, and/or/not and the functions "
                f"{', '.join(sorted(FUNCTIONS))}"
            )
    return Expression(source=source, tree=tree, columns=tuple(columns))


class _Evaluator(ast.NodeVisitor):
    def __init__(self, df: pd.DataFrame):
        self.df = df

    def visit_Name(self, node: ast.Name):
        s = self.df[node.id]
        if pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_numeric_dtype(s.dtype):
            return s.to_numpy(dtype=np.float64, na_value=np.nan)
        if pd.api.types.is_datetime64_any_dtype(s.dtype):
            # datetimes become seconds since the epoch
            return (s.astype("datetime64[ns]").astype("int64") / 1e9).where(s.notna()).to_numpy(
                dtype=np.float64, na_value=np.nan)
        return s.astype(object).to_numpy()

    def visit_Constant(self, node: ast.Constant):
        return node.value

    def visit_UnaryOp(self, node: ast.UnaryOp):
        v = self.visit(node.operand)
        if isinstance(node.op, ast.USub):
            return -np.asarray(v, dtype=np.float64)
        if isinstance(node.op, ast.Not):
            return (~np.asarray(v, dtype=bool)).astype(np.float64)
        return v

    def visit_BinOp(self, node: ast.BinOp):
        a = np.asarray(self.visit(node.left), dtype=np.float64)
        b = np.asarray(self.visit(node.right), dtype=np.float64)
        return _BINOPS[type(node.op)](a, b)

    def visit_Compare(self, node: ast.Compare):
        left = self.visit(node.left)
        result = None
        for op, right_node in zip(node.ops, node.comparators):
            right = self.visit(right_node)
            with np.errstate(invalid="ignore"):
                r = np.asarray(_CMPOPS[type(op)](left, right), dtype=bool)
            result = r if result is None else (result & r)
            left = right
        return result.astype(np.float64)

    def visit_BoolOp(self, node: ast.BoolOp):
        vals = [np.asarray(self.visit(v), dtype=np.float64) for v in node.values]
        out = np.nan_to_num(vals[0]) != 0
        for v in vals[1:]:
            out = (out & (np.nan_to_num(v) != 0)) if isinstance(node.op, ast.And) else (out | (np.nan_to_num(v) != 0))
        return out.astype(np.float64)

    def visit_Call(self, node: ast.Call):
        fn, _ = FUNCTIONS[node.func.id]
        args = [self.visit(a) for a in node.args]
        if node.func.id not in ("isnull", "where"):
            args = [np.asarray(a, dtype=np.float64) for a in args]
        return fn(*args)

    def generic_visit(self, node):  # pragma: no cover - parse() rejects these first
        raise ExpressionError(f"{type(node).__name__} is not allowed")

