import numpy as np
import pandas as pd
import pytest

from mlops_ray.expr import ExpressionError, parse

DF = pd.DataFrame({"a": [1.0, 2.0, None, 4.0], "b": [0, 1, 2, 3], "c": ["US", "DE", None, "US"]})


@pytest.mark.parametrize("source, expected", [
    ("a / b", [np.nan, 2.0, np.nan, 4 / 3]),
    ("log1p(b)", list(np.log1p([0, 1, 2, 3]))),
    ("where(c == 'US', 1, 0)", [1, 0, 0, 1]),
    ("a > 1 and b < 3", [0, 1, 0, 0]),
    ("clip(b, 1, 2)", [1, 1, 2, 2]),
    ("-a + 2 ** b", [0, 0, np.nan, 4]),
    ("isnull(a)", [0, 0, 1, 0]),
    ("fillna(a, -1)", [1, 2, -1, 4]),
    ("maximum(a, b)", [1, 2, np.nan, 4]),
    ("3", [3, 3, 3, 3]),
])
def test_evaluates_vectorised(source, expected):
    np.testing.assert_allclose(parse(source).evaluate(DF), expected, equal_nan=True)


def test_columns_exclude_function_names():
    assert set(parse("log1p(amount) + where(x > 1, y, 0)").columns) == {"amount", "x", "y"}


def test_one_row_equals_batch():
    e = parse("log1p(a) * b - where(c == 'US', 1, 0)")
    batch = e.evaluate(DF)
    rows = np.concatenate([e.evaluate(DF.iloc[[i]]) for i in range(len(DF))])
    np.testing.assert_array_equal(batch, rows)


@pytest.mark.parametrize("source, message", [
    ("__import__('os').system('x')", "not allowed"),
    ("open('/etc/passwd')", "function 'open' is not allowed"),
    ("a.real", "Attribute is not allowed"),
    ("[a, b]", "List is not allowed"),
    ("a[0]", "Subscript is not allowed"),
    ("lambda: 1", "Lambda is not allowed"),
    ("log(a, 2)", "log() takes 1 positional argument"),
    ("a +", "syntax error"),
    ("", "expression is empty"),
    ("True", "constant True is not allowed"),
])
def test_rejects_everything_else(source, message):
    with pytest.raises(ExpressionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(source)


def test_unknown_column_is_named():
    with pytest.raises(ExpressionError, match=r"uses column\(s\) \['zz'\]"):
        parse("zz + 1").evaluate(DF)
