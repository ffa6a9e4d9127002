"""The prediction log: every answered prediction, one record per predicted row, hourly Parquet.

In: the serving replicas' answered requests (``PredictionLog.append``, spooled locally before
the answer, turned into Parquet in the background; ``recover_orphans`` finishes the spool of a
replica that died) and batch scoring's tables (``TableWriter``). Out: ``read_log``, the records of
a time window, read by drift monitoring and the label join.

``format`` (the schema, file layout, spool files and value coercion), ``writer``, ``recovery``,
``reader``. Pure Python + pyarrow: no Ray imports.
"""
from mlops_ray.monitor.predlog.format import (
    COERCE, KIND_TYPES, PARTITIONING, TS_TYPE, check_input_types, filesystem_for, log_id_column, log_schema)
from mlops_ray.monitor.predlog.reader import read_log, written_files
from mlops_ray.monitor.predlog.recovery import recover_orphans
from mlops_ray.monitor.predlog.writer import PredictionLog, TableWriter

__all__ = ["COERCE", "KIND_TYPES", "PARTITIONING", "TS_TYPE", "PredictionLog", "TableWriter", "check_input_types",
           "filesystem_for", "log_id_column", "log_schema", "read_log", "recover_orphans", "written_files"]
