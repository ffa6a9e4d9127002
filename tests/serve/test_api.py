"""The /predict request contract (mlops_ray/serve/api.py): what is accepted, how it is
normalized, and that every rejection names the field (or limit) and the fix."""
import asyncio
import json
import math
import time
from datetime import datetime
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mlops_ray.registry.bundle import load_bundle
from mlops_ray.config import ServeConfig
from mlops_ray.serve.api import RequestError, RequestParser

pytestmark = pytest.mark.unit

JSON = "application/json"
MAX_ROWS = 10
MAX_BYTES = 20_000


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def parser(bundle):
    cfg = ServeConfig(max_batch_rows=MAX_ROWS, max_body_bytes=MAX_BYTES)
    return RequestParser.from_bundle(bundle, cfg)


def to_records(df: pd.DataFrame) -> list[dict]:
    """DataFrame rows -> JSON-ready dicts (ISO strings for timestamps, None for NaN/NaT)."""
    out = []
    for rec in df.astype(object).to_dict(orient="records"):
        row = {}
        for k, v in rec.items():
            if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT:
                row[k] = None
            elif isinstance(v, pd.Timestamp):
                row[k] = v.isoformat()
            elif isinstance(v, np.generic):
                row[k] = v.item()
            else:
                row[k] = v
        out.append(row)
    return out


@pytest.fixture(scope="module")
def rows(small_df, bundle):
    inputs = small_df.drop(columns=["transaction_id", "is_fraud"])
    assert list(inputs.columns) == list(bundle.spec.input_types)
    return to_records(inputs.iloc[:200])


@pytest.fixture
def row(rows):
    r = next(r for r in rows if all(v is not None for v in r.values()))
    return dict(r)


def dumps(obj) -> bytes:
    return json.dumps(obj).encode()


def parse_err(parser, body, content_type=JSON) -> RequestError:
    with pytest.raises(RequestError) as ei:
        parser.parse(body, content_type)
    err = ei.value
    assert err.body() == {"error": {"code": err.code, "message": err.message, "field": err.field}}
    return err


def test_demo_input_types(bundle):
    assert bundle.spec.input_types == {
        "event_time": "datetime", "amount": "float", "account_age_days": "int", "num_txn_24h": "int",
        "distance_km": "float", "credit_score": "float", "merchant_id": "string",
        "merchant_category": "string", "country": "string", "device": "string", "channel": "string"}


# --------------------------------------------------------------------------- bad input
def _without(r, k):
    return {f: v for f, v in r.items() if f != k}


BAD_ROWS = [
    # id, row -> row, (status, code, field, words the message must contain)
    ("missing field", lambda r: _without(r, "amount"), (422, "missing_field", "amount", ["amount", "null"])),
    ("string for float", lambda r: {**r, "amount": "12.5"},
     (422, "invalid_type", "amount", ["amount", "number", "without quotes"])),
    ("fraction for int", lambda r: {**r, "account_age_days": 3.5},
     (422, "invalid_type", "account_age_days", ["account_age_days", "integer", "3.5"])),
    ("bool for int", lambda r: {**r, "num_txn_24h": True}, (422, "invalid_type", "num_txn_24h", ["num_txn_24h"])),
    ("list for string", lambda r: {**r, "country": ["CA"]}, (422, "invalid_type", "country", ["country", "array"])),
    ("object for string", lambda r: {**r, "device": {"a": 1}}, (422, "invalid_type", "device", ["device"])),
    ("number for datetime", lambda r: {**r, "event_time": 1700000000},
     (422, "invalid_type", "event_time", ["event_time", "ISO-8601"])),
    ("bad datetime", lambda r: {**r, "event_time": "yesterday"},
     (422, "invalid_datetime", "event_time", ["event_time", "yesterday", "ISO-8601"])),
    ("datetime out of range", lambda r: {**r, "event_time": "0001-01-01T00:00:00"},
     (422, "out_of_range", "event_time", ["event_time"])),
    ("unknown field", lambda r: {**r, "amout": 1.0},
     (422, "unknown_field", "amout", ["amout", "did you mean 'amount'", "extra_fields"])),
    ("typo instead of field", lambda r: {**_without(r, "amount"), "amout": 1.0},
     (422, "unknown_field", "amout", ["did you mean 'amount'", "missing field"])),
]


@pytest.mark.parametrize("make, expected", [c[1:] for c in BAD_ROWS], ids=[c[0] for c in BAD_ROWS])
@pytest.mark.parametrize("batch", [False, True], ids=["object", "array"])
def test_bad_row(parser, row, make, expected, batch):
    status, code, field, words = expected
    bad = make(dict(row))
    body = dumps([row, row, row, bad]) if batch else dumps(bad)
    err = parse_err(parser, body)
    assert (err.status, err.code) == (status, code)
    assert err.field == (f"rows[3].{field}" if batch else field)
    assert err.field in err.message
    for w in words:
        assert w in err.message


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("col", ["amount", "merchant_id", "account_age_days"])
def test_non_finite_numbers_are_rejected(parser, row, literal, col):
    body = json.dumps({**row, col: 0}).replace(f'"{col}": 0', f'"{col}": {literal}').encode()
    assert literal.encode() in body
    err = parse_err(parser, body)
    assert (err.status, err.code, err.field) == (422, "not_finite", col)
    assert literal in err.message and "use null" in err.message


def test_overflowing_number_is_rejected(parser, row):
    body = json.dumps({**row, "amount": 0}).replace('"amount": 0', '"amount": 1e400').encode()
    err = parse_err(parser, body)
    assert (err.status, err.code, err.field) == (422, "not_finite", "amount")
    err = parse_err(parser, dumps({**row, "num_txn_24h": 2 ** 70}))
    assert (err.code, err.field) == ("out_of_range", "num_txn_24h")


def test_several_bad_rows_are_reported_together(parser, row):
    bad = [{**row, "amount": "x"} for _ in range(8)]
    err = parse_err(parser, dumps([row] + bad))
    assert (err.code, err.field) == ("invalid_type", "rows[1].amount")
    assert len(err.problems) == 5
    for i in range(1, 6):
        assert f"rows[{i}].amount" in err.message
    assert "rows[6]" not in err.message and "first 5" in err.message


def test_row_that_is_not_an_object(parser, row):
    err = parse_err(parser, dumps([row, 5]))
    assert (err.status, err.code, err.field) == (422, "invalid_type", "rows[1]")
    assert "rows[1]" in err.message and "object" in err.message


@pytest.mark.parametrize("body, status, code, words", [
    (b"[]", 422, "empty_batch", ["empty"]),
    (b'{"amount": 1', 400, "invalid_json", ["not valid JSON", "line 1 column 13", "char 12"]),
    (b"amount=1", 400, "invalid_json", ["not valid JSON", "line 1 column 1"]),
    (b"", 400, "invalid_json", ["empty"]),
    (b"\xff\xfe{}", 400, "invalid_json", ["UTF-8"]),
    (b"[" * 5000 + b"]" * 5000, 400, "invalid_json", ["nested"]),
    (b"42", 422, "invalid_body", ["object", "array", "number"]),
    (b'"a row"', 422, "invalid_body", ["object", "array", "string"]),
    (b"null", 422, "invalid_body", ["null"]),
], ids=["empty list", "truncated", "not json", "empty body", "not utf-8", "too deep", "number", "string", "null"])
def test_bad_body(parser, body, status, code, words):
    err = parse_err(parser, body)
    assert (err.status, err.code, err.field) == (status, code, None)
    for w in words:
        assert w in err.message


def test_too_many_rows_names_limit_and_count(parser, row):
    err = parse_err(parser, dumps([row] * (MAX_ROWS + 1)))
    assert (err.status, err.code, err.field) == (422, "too_many_rows", None)
    assert str(MAX_ROWS) in err.message and str(MAX_ROWS + 1) in err.message
    assert "max_batch_rows" in err.message


def test_body_too_large_is_checked_before_parsing(parser):
    body = b"{" + b" " * MAX_BYTES            # not JSON either: size must win
    err = parse_err(parser, body)
    assert (err.status, err.code, err.field) == (413, "body_too_large", None)
    assert str(MAX_BYTES) in err.message and str(len(body)) in err.message
    with pytest.raises(RequestError) as ei:                 # from the Content-Length header
        parser.check_length(MAX_BYTES + 1)
    assert ei.value.status == 413
    parser.check_length(MAX_BYTES)
    parser.check_length(None)


@pytest.mark.parametrize("content_type, words", [
    ("text/plain", ["text/plain", "application/json"]),
    ("application/x-www-form-urlencoded", ["application/json"]),
    (None, ["Content-Type", "application/json"]),
    ("", ["Content-Type"]),
    ("application/json; charset=latin-1", ["latin-1", "UTF-8"]),
])
def test_wrong_content_type(parser, row, content_type, words):
    err = parse_err(parser, dumps(row), content_type)
    assert (err.status, err.code, err.field) == (415, "unsupported_media_type", None)
    for w in words:
        assert w in err.message


def test_content_type_is_checked_before_size_and_json(parser):
    assert parse_err(parser, b"x" * (MAX_BYTES + 1), "text/plain").status == 415


# --------------------------------------------------------------------------- good input
@pytest.mark.parametrize("content_type", [
    "application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8",
    'application/json; charset="utf-8"'])
def test_one_row_object(parser, row, content_type):
    out = parser.parse(dumps(row), content_type)
    assert len(out) == 1
    assert list(out[0]) == list(parser.input_types)
    assert out[0]["amount"] == row["amount"] and type(out[0]["amount"]) is float
    assert out[0]["event_time"] == datetime.fromisoformat(row["event_time"])


def test_list_of_three_rows(parser, rows):
    out = parser.parse(dumps(rows[:3]), JSON)
    assert [r["amount"] for r in out] == [r["amount"] for r in rows[:3]]


def test_null_values(parser, row):
    nulls = {k: None for k in row}
    out = parser.parse(dumps([nulls, row]), JSON)
    assert out[0] == nulls
    assert out[1]["country"] == row["country"]


def test_numbers_for_a_categorical_field_stay_numbers(parser, row):
    out = parser.parse(dumps([{**row, "merchant_id": 756}, {**row, "merchant_id": 7.5}]), JSON)
    assert out[0]["merchant_id"] == 756 and type(out[0]["merchant_id"]) is int
    assert out[1]["merchant_id"] == 7.5


def test_numeric_coercions(parser, row):
    out = parser.parse(dumps({**row, "amount": 12, "account_age_days": 3.0}), JSON)[0]
    assert out["amount"] == 12.0 and type(out["amount"]) is float
    assert out["account_age_days"] == 3 and type(out["account_age_days"]) is int


@pytest.mark.parametrize("text, expected", [
    ("2026-01-31T12:00:00", datetime(2026, 1, 31, 12)),
    ("2026-01-31T12:00:00Z", datetime(2026, 1, 31, 12)),
    ("2026-01-31T17:30:00+05:30", datetime(2026, 1, 31, 12)),
    ("2026-01-31 12:00:00.123", datetime(2026, 1, 31, 12, 0, 0, 123000)),
    ("2026-01-31T12:00:00.123456789Z", datetime(2026, 1, 31, 12, 0, 0, 123456)),
    ("2026-01-31", datetime(2026, 1, 31)),
])
def test_datetimes_become_naive_utc(parser, row, text, expected):
    out = parser.parse(dumps({**row, "event_time": text}), JSON)[0]["event_time"]
    assert out == expected and out.tzinfo is None


def test_extra_fields_ignore_drops_them(bundle, row):
    p = RequestParser.from_bundle(bundle, ServeConfig(extra_fields="ignore"))
    out = p.parse(dumps([{**row, "note": "x"}, row]), JSON)
    assert "note" not in out[0] and out[0] == out[1]
    err = parse_err(p, dumps({**_without(row, "amount"), "amout": 1.0}))  # a typo is still a missing field
    assert (err.code, err.field) == ("missing_field", "amount")
    assert "'amout'" in err.message


def test_bool_inputs():
    p = RequestParser({"flag": "bool", "x": "float"}, max_batch_rows=5, max_body_bytes=2000)
    out = p.parse(dumps([{"flag": True, "x": 1}, {"flag": 0, "x": None}, {"flag": None, "x": 2.5}]), JSON)
    assert [r["flag"] for r in out] == [True, False, None]
    err = parse_err(p, dumps({"flag": "yes", "x": 1}))
    assert (err.code, err.field) == ("invalid_type", "flag")
    assert parse_err(p, dumps({"flag": 2, "x": 1})).code == "invalid_type"


def test_constructor_validates_arguments():
    with pytest.raises(ValueError, match="extra_fields"):
        RequestParser({"x": "float"}, max_batch_rows=1, max_body_bytes=10, extra_fields="drop")
    with pytest.raises(ValueError, match="complex"):
        RequestParser({"x": "complex"}, max_batch_rows=1, max_body_bytes=10)


def test_200_real_rows_round_trip(parser, bundle, small_df, rows):
    p = RequestParser.from_bundle(bundle, ServeConfig(max_batch_rows=1000))
    out = p.parse(dumps(rows), JSON)
    assert len(out) == len(rows) == 200
    inputs = small_df.drop(columns=["transaction_id", "is_fraud"]).iloc[:200]
    for got, sent, (_, orig) in zip(out, rows, inputs.iterrows()):
        assert list(got) == list(bundle.spec.input_types)
        for col, kind in bundle.spec.input_types.items():
            if sent[col] is None:
                assert got[col] is None and pd.isna(orig[col])
            elif kind == "datetime":
                assert got[col] == orig[col].to_pydatetime()
            else:
                assert got[col] == orig[col], col
    # the slow (explaining) path normalizes exactly like the fast path
    assert p._slow(json.loads(dumps(rows)), single=False) == out
    # and the model sees the same thing as from the training frame
    frame = pd.DataFrame(out, columns=list(bundle.spec.input_types))
    np.testing.assert_array_equal(bundle.predict(frame), bundle.predict(inputs.reset_index(drop=True)))


# --------------------------------------------------------------------------- docs models
def test_openapi_models(parser, row):
    schema = parser.request_model.model_json_schema()
    row_schema = schema["$defs"]["PredictRow"]
    assert sorted(row_schema["required"]) == sorted(parser.input_types)
    assert row_schema["additionalProperties"] is False
    arr = next(s for s in schema["anyOf"] if s.get("type") == "array")
    assert arr["maxItems"] == MAX_ROWS and arr["minItems"] == 1
    parser.request_model.model_validate_json(dumps(row))
    resp = parser.response_model(predictions=[0.1, [0.2, 0.8]], labels=[0, 1], model_version="3", request_id="r")
    assert resp.model_dump()["predictions"] == [0.1, [0.2, 0.8]]
    err = RequestError(422, "missing_field", "amount: missing", "amount")
    assert parser.error_model.model_validate(err.body()).error.field == "amount"


def test_odd_column_names_get_aliases():
    p = RequestParser({"model_config": "float", "a b": "string", "json": "int"}, max_batch_rows=2,
                      max_body_bytes=2000)
    props = p.row_model.model_json_schema(by_alias=True)["properties"]
    assert set(props) == {"model_config", "a b", "json"}
    assert p.parse(dumps({"model_config": 1, "a b": "x", "json": 2}), JSON) == [
        {"model_config": 1.0, "a b": "x", "json": 2}]


def test_the_id_column_is_accepted_and_kept_but_is_not_an_input():
    from mlops_ray.serve.api import RequestParser
    p = RequestParser({"amount": "float", "channel": "string"}, max_batch_rows=10, max_body_bytes=10_000,
                      passthrough=("transaction_id",))
    rows = p.parse(b'[{"amount": 1, "channel": "atm", "transaction_id": 17}, {"amount": 2, "channel": "x"}]',
                   "application/json")
    assert rows[0] == {"amount": 1.0, "channel": "atm", "transaction_id": "17"}
    assert rows[1] == {"amount": 2.0, "channel": "x"}
    with pytest.raises(RequestError, match="unknown field"):
        p.parse(b'{"amount": 1, "channel": "atm", "transaction_idd": 17}', "application/json")
    with pytest.raises(RequestError, match="missing"):
        p.parse(b'{"amount": 1, "transaction_id": 17}', "application/json")


def test_a_partial_row_names_every_missing_field_in_one_problem(parser, row):
    err = parse_err(parser, dumps({"amount": 12.5}))
    assert err.code == "missing_field" and len(err.problems) == 1
    missing = [k for k in row if k != "amount"]
    assert f"{len(missing)} of {len(row)} input fields missing: {', '.join(missing)}" in err.message
    assert "GET /schema" in err.message


# ---------------------------------------------------------------- the replica's /predict (serve/app.py), no Serve
class _Log:
    def __init__(self, fail: bool = False, delay_s: float = 0.0):
        self.fail, self.delay_s = fail, delay_s

    def append(self, *args):
        time.sleep(self.delay_s)
        if self.fail:
            raise OSError("disk full")


class _Model:
    """What the Predictor uses of a ServedModel."""

    def __init__(self, version: str, parser, log: _Log, threshold: float = 0.5):
        self.version, self.parser, self.log, self.inline = version, parser, log, False
        self.binary, self.threshold = True, threshold

    async def infer(self, rows):
        return [0.25] * len(rows)

    def close(self):
        pass


class _Request:
    def __init__(self, body: bytes):
        self._body, self.method, self.url = body, "POST", SimpleNamespace(path="/predict")
        self.headers = {"content-type": JSON, "content-length": str(len(body))}

    async def body(self):
        return self._body


def replica(stable: _Model, *others: _Model):
    from mlops_ray.serve import stats as st
    from mlops_ray.serve.app import Predictor, Route
    from tests.support.configs import make_config
    p = object.__new__(Predictor)             # its __init__ needs a Serve replica context
    p.cfg, p.stats = make_config("x"), st.ReplicaStats("r", [0.5])
    p.m_latency = SimpleNamespace(observe=lambda *a, **k: None)
    p.models = {m.version: m for m in (stable, *others)}
    p.route, p._shadow_tasks, p._retiring, p._retire_tasks = Route(stable), set(), set(), set()
    return p


def test_a_prediction_that_cannot_be_logged_counts_as_an_error_with_its_prediction_latency(parser, row):
    p = replica(_Model("1", parser, _Log(fail=True, delay_s=0.1)))
    assert asyncio.run(p._predict(_Request(dumps(row)))).status_code == 503
    s = p.stats.by_version["1"]
    assert (s.requests, s.errors) == (1, 1)
    assert s.latency_quantile_ms(1.0) < 100          # the log's 100 ms are not the model's latency
    p = replica(_Model("1", parser, _Log()))
    assert asyncio.run(p._predict(_Request(dumps(row)))).status_code == 200
    s = p.stats.by_version["1"]
    assert (s.requests, s.errors, s.rows) == (1, 0, 1)


def test_a_binary_answer_has_labels_at_the_versions_threshold(parser, row):
    import json
    for threshold, label in ((0.2, 1), (0.3, 0)):           # the fake model predicts 0.25
        resp = asyncio.run(replica(_Model("1", parser, _Log(), threshold))._predict(_Request(dumps([row, row]))))
        body = json.loads(resp.body)
        assert body["predictions"] == [0.25, 0.25] and body["labels"] == [label, label]


def test_the_replica_keeps_each_retiring_version_task_until_it_ends(parser, tmp_path):
    # the event loop holds tasks weakly: one nobody references can be collected mid-run
    from mlops_ray.storage.state import ServingState, write_state
    old, new = _Model("1", parser, _Log()), _Model("2", parser, _Log())
    p = replica(new, old)
    p.state_file, p._remote, p._mtime, p.poll_s = str(tmp_path / "state.json"), False, None, 0.01
    write_state(p.state_file, ServingState(name="m", stable="2"))

    async def poll_once():
        follow = asyncio.get_running_loop().create_task(p._follow_state())
        await asyncio.sleep(0.05)
        follow.cancel()
        assert list(p.models) == ["2"] and p._retiring == {old}
        (retire,) = p._retire_tasks
        retire.cancel()
        await asyncio.wait([retire])
        assert not p._retire_tasks
    asyncio.run(poll_once())


def test_a_multiclass_answer_names_the_most_probable_class(parser, row):
    import json

    class _Multi(_Model):
        async def infer(self, rows):
            return [[0.1, 0.7, 0.2]] * len(rows)

    m = _Multi("1", parser, _Log())
    m.binary, m.classes = False, ["cat", "dog", "eel"]
    body = json.loads(asyncio.run(replica(m)._predict(_Request(dumps([row, row])))).body)
    assert body["predictions"] == [[0.1, 0.7, 0.2]] * 2 and body["labels"] == ["dog", "dog"]


def _get(p, path: str) -> dict:
    import json
    req = SimpleNamespace(method="GET", url=SimpleNamespace(path=path), headers={})
    resp = asyncio.run(p(req))
    assert resp.status_code == 200
    return json.loads(resp.body)


def test_schema_lists_the_id_column_predict_accepts_and_the_labels_it_answers(bundle, row):
    """GET /schema omitted the id column /predict accepts and the labels its answers carry."""
    p = RequestParser.from_bundle(bundle, ServeConfig(max_batch_rows=MAX_ROWS), passthrough=("transaction_id",))
    schema = _get(replica(_Model("1", p, _Log())), "/schema")
    props = schema["request"]["$defs"]["PredictRow"]["properties"]
    assert "transaction_id" in props and "data.id_column" in props["transaction_id"]["description"]
    assert "transaction_id" not in schema["request"]["$defs"]["PredictRow"]["required"]
    labels = schema["response"]["properties"]["labels"]
    assert labels["items"]["type"] == "integer" and "threshold" in labels["description"]
    assert "labels" in schema["response"]["required"] and schema["task"] == "binary" and schema["version"] == "1"
    assert "classes" not in schema
    # and what it describes is what /predict does
    p.request_model.model_validate_json(dumps([{**row, "transaction_id": 17}]))
    answered = asyncio.run(replica(_Model("1", p, _Log()))._predict(_Request(dumps({**row, "transaction_id": 17}))))
    p.response_model.model_validate_json(answered.body)


def test_schema_of_a_multiclass_model_gives_the_class_order():
    p = RequestParser({"x": "float"}, max_batch_rows=2, max_body_bytes=2000, task="multiclass",
                      classes=["cat", "dog", "eel"])
    schema = p.schema()
    assert schema["classes"] == ["cat", "dog", "eel"]
    assert "['cat', 'dog', 'eel']" in schema["response"]["properties"]["predictions"]["description"]
    assert "class" in schema["response"]["properties"]["labels"]["description"]
    p.response_model.model_validate({"predictions": [[0.1, 0.7, 0.2]], "labels": ["dog"], "model_version": "1",
                                     "request_id": "r"})
    regression = RequestParser({"x": "float"}, max_batch_rows=2, max_body_bytes=2000, task="regression").schema()
    assert "labels" not in regression["response"]["properties"]
