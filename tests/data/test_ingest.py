"""Ingest checks run on file metadata only (no Ray): each bad source names the file and the fix."""
import os

import pytest

from mlops_ray.data.ingest import inspect_source
from mlops_ray.errors import DataSourceError, ExitCode
from tests.support.configs import make_config, write_parquet

pytestmark = pytest.mark.unit


def inspect(source, **data):
    return inspect_source(make_config(str(source), data=data).data)


def test_parquet_directory(parquet_dir, small_df):
    src = inspect(parquet_dir)
    assert src.format == "parquet" and len(src.files) == 2 and src.rows == len(small_df)
    assert src.fingerprint.startswith("sha256:") and src.fingerprint_kind == "content"


def test_fingerprint_is_stable_and_changes_with_content(parquet_dir, small_df):
    a = inspect(parquet_dir).fingerprint
    assert inspect(parquet_dir).fingerprint == a
    write_parquet(small_df.iloc[:100], parquet_dir / "more")
    assert inspect(parquet_dir).fingerprint != a


def test_large_data_is_fingerprinted_by_metadata(parquet_dir):
    src = inspect(parquet_dir, content_hash_max_mb=0)
    assert src.fingerprint.startswith("meta:") and src.fingerprint_kind == "metadata"


def test_glob_and_list(parquet_dir):
    assert len(inspect(str(parquet_dir / "part-00*.parquet")).files) == 2
    cfg = make_config("x", data={"source": [str(parquet_dir / "part-000.parquet")]})
    assert len(inspect_source(cfg.data).files) == 1


def expect(source, message, **data):
    with pytest.raises(DataSourceError) as e:
        inspect(source, **data)
    assert e.value.exit_code == ExitCode.DATA
    assert message in str(e.value), str(e.value)
    return str(e.value)


def test_nonexistent_path(tmp_path):
    msg = expect(tmp_path / "nope", "does not exist; check data.source")
    assert "nope" in msg


def test_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    expect(tmp_path / "empty", "directory", )
    expect(tmp_path / "empty", "is empty")


def test_glob_matching_nothing(tmp_path):
    expect(tmp_path / "*.parquet", "matches no files")


def test_empty_parquet_file(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"")
    expect(tmp_path / "x.parquet", "x.parquet' is empty (0 bytes)")


def test_truncated_parquet_file(parquet_dir, tmp_path):
    data = (parquet_dir / "part-000.parquet").read_bytes()
    bad = tmp_path / "truncated.parquet"
    bad.write_bytes(data[: len(data) // 2])
    msg = expect(bad, "truncated.parquet' cannot be read; it is truncated or corrupt")
    assert "Re-export it" in msg


def test_corrupt_parquet_in_a_directory(parquet_dir):
    (parquet_dir / "part-999.parquet").write_bytes(b"PAR1 this is not parquet at all")
    expect(parquet_dir, "part-999.parquet' cannot be read")



@pytest.mark.parametrize("name, data", [("data.parquet", {}), ("data.csv", {"format": "parquet"}),
                                        ("semi.parquet", {"csv": {"delimiter": ";"}})])
def test_a_csv_file_read_as_parquet_says_it_looks_like_csv(small_df, tmp_path, name, data):
    p = tmp_path / name
    small_df.head(20).to_csv(p, index=False, sep=data.get("csv", {}).get("delimiter", ","))
    msg = expect(p, f"{name}' is not Parquet (it does not start with Parquet's PAR1 magic): it looks like CSV", **data)
    assert "set data.format: csv" in msg and "truncated" not in msg

def test_csv_with_wrong_delimiter(small_df, tmp_path):
    p = tmp_path / "semi.csv"
    small_df.head(50).to_csv(p, sep=";", index=False)
    expect(p, "set data.csv.delimiter: \";\"")
    assert inspect(p, csv={"delimiter": ";"}).format == "csv"


def test_empty_csv(tmp_path):
    (tmp_path / "e.csv").write_text("")
    expect(tmp_path / "e.csv", "e.csv' is empty")


def test_csv_files_with_different_headers(small_df, tmp_path):
    d = tmp_path / "csvs"
    d.mkdir()
    small_df.head(5).to_csv(d / "a.csv", index=False)
    small_df.head(5).drop(columns=["amount"]).to_csv(d / "b.csv", index=False)
    expect(d, f"1 of 2 differ from the others' {small_df.shape[1]} columns: '{d}/b.csv' lacks amount. Move files "
              "that are not this data elsewhere, or list the shared ones in data.columns, or re-export the CSV "
              "files with one header")


def test_parquet_files_with_different_columns_are_named_before_any_row_is_read(small_df, tmp_path):
    """Validation crashed with KeyError: 'Field "amount" does not exist in schema' (exit 1)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    d = tmp_path / "months"
    for name, df in (("2026-01.parquet", small_df), ("2026-02.parquet", small_df.drop(columns=["amount"])),
                     ("2026-03.parquet", small_df.assign(note="x")), ("2026-04.parquet", small_df)):
        d.mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pandas(df.head(20), preserve_index=False), d / name)
    expect(d, f"2 of 4 differ from the others' {small_df.shape[1]} columns: '{d}/2026-02.parquet' lacks amount; "
              f"'{d}/2026-03.parquet' lacks nothing and adds note. Move files that are not this data elsewhere, "
              "or set data.missing_columns: null to read the union")
    assert inspect(d, columns=[c for c in small_df.columns if c != "amount"]).rows == 80   # not among those read
    src = inspect(d, missing_columns="null")
    assert src.rows == 80 and {"amount", "note"} <= set(src.schema.names)


def test_unknown_format(tmp_path):
    (tmp_path / "data.json").write_text("{}")
    expect(tmp_path / "data.json", "set data.format to parquet or csv")


def test_projection_of_unknown_column(parquet_dir):
    expect(parquet_dir, "data.columns lists ['nope']",
           columns=["transaction_id", "event_time", "is_fraud", "nope"])


def test_projection(parquet_dir):
    src = inspect(parquet_dir, columns=["transaction_id", "event_time", "amount", "is_fraud"])
    assert src.schema.names == ["transaction_id", "event_time", "amount", "is_fraud"]


def test_hidden_files_are_ignored(parquet_dir):
    (parquet_dir / "_SUCCESS").write_text("")
    (parquet_dir / ".part-000.parquet.crc").write_text("x")
    assert len(inspect(parquet_dir).files) == 2
    assert os.path.exists(parquet_dir / "_SUCCESS")


def test_a_gzipped_csv_is_read(small_df, tmp_path):
    """pyarrow's stream already decompresses .gz by the name; decompressing again crashed (BadGzipFile)."""
    from mlops_ray.data.ingest import read_table_local
    path = tmp_path / "export.csv.gz"
    small_df.head(50).to_csv(path, index=False, compression="gzip")
    cfg = make_config(str(path))
    source = inspect_source(cfg.data)
    assert source.format == "csv" and source.schema.names == list(small_df.columns)
    assert read_table_local(source, cfg.data).num_rows == 50
