import numpy as np
import pandas as pd
import pytest

from mlops_ray.expr import ExpressionError, parse

pytestmark = pytest.mark.unit

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


FILMS = pd.DataFrame({"Production Budget": [1.5e7, 9.0e7, None], "Worldwide Gross": [4.2e7, 3.1e8, 1.2e6],
                      "MPAA Rating": ["R", "PG-13", "R"], "imdb.rating": [7.1, 6.4, 5.9]})


def test_backticks_name_any_column():
    e = parse("log1p(`Worldwide Gross`) - log1p(`Production Budget`) + where(`MPAA Rating` == 'R', 1, 0)")
    assert e.columns == ("Worldwide Gross", "Production Budget", "MPAA Rating")
    expected = np.log1p(FILMS["Worldwide Gross"]) - np.log1p(FILMS["Production Budget"]) + [1, 0, 1]
    np.testing.assert_allclose(e.evaluate(FILMS), expected, equal_nan=True)
    assert parse("`imdb.rating` * 10").evaluate(FILMS).tolist() == [71.0, 64.0, 59.0]
    assert parse("'a `b`' == `MPAA Rating`").columns == ("MPAA Rating",)   # backticks in a string stay text


@pytest.mark.parametrize("source, message", [
    ("log1p(Production Budget)", "syntax error in 'log1p(Production Budget)': invalid syntax; a column name with "
                                 "spaces or dots goes in backticks: write 'log1p(`Production Budget`)' (if "
                                 "`Production Budget` is a column)"),
    ('log1p("Worldwide Gross")', "'Worldwide Gross' in 'log1p(\"Worldwide Gross\")' is a string, which only a "
                                 "comparison takes (country == \"US\"); if 'Worldwide Gross' is a column, put its "
                                 "name in backticks: `Worldwide Gross`"),
    ("imdb.rating * 10", "Attribute is not allowed in 'imdb.rating * 10': if 'imdb.rating' is a column name with a "
                         "dot, put it in backticks: `imdb.rating`"),
    ("log1p(`Production Budget)", "unclosed backtick"),
])
def test_a_column_name_with_spaces_quoted_wrong_says_to_use_backticks(source, message):
    with pytest.raises(ExpressionError) as info:
        parse(source)
    assert str(info.value) == message or (message == "unclosed backtick" and str(info.value).startswith(message))


def test_config_check_catches_a_quoted_column_in_an_expression():
    from mlops_ray.errors import ConfigError
    from tests.support.configs import make_config
    with pytest.raises(ConfigError, match=r"put its name in backticks: `Worldwide Gross`"):
        make_config("films.parquet", data={"label": "hit", "id_column": None, "time_column": None},
                    features={"derived": {"log_gross": 'log1p("Worldwide Gross")'}})
    with pytest.raises(ConfigError, match=r"write 'log1p\(`Production Budget`\) > 16'"):
        make_config("films.parquet", data={"label": {"name": "big", "expr": "log1p(Production Budget) > 16"},
                                           "id_column": None, "time_column": None})


def test_a_backticked_derived_column_serves_as_it_trains():
    from mlops_ray.data import features as feat
    from mlops_ray.data.rows import RowEncoder
    spec = feat.FeatureSpec(label="hit", numeric=[feat.NumericFeature("Production Budget")],
                            derived=[feat.DerivedFeature("roi", "log1p(`Worldwide Gross`) - log1p(`Production Budget`)")],
                            input_types={"Production Budget": "float", "Worldwide Gross": "float"})
    rows = FILMS[["Production Budget", "Worldwide Gross"]].astype(object).where(FILMS.notna(), None)
    rows = rows.to_dict(orient="records")
    enc = RowEncoder(spec)
    assert enc.fast
    np.testing.assert_array_equal(enc.encode(rows), feat.transform(pd.DataFrame(rows), spec).to_numpy(np.float32))
