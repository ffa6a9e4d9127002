
import pytest

from mlops_ray.data.synth import SynthSpec, generate_chunk

pytestmark = pytest.mark.unit


def test_shape_and_realism():
    df = generate_chunk(SynthSpec(rows=50_000, seed=1), 0, 50_000)
    assert 0.01 < df["is_fraud"].mean() < 0.08                   # imbalanced
    assert df["amount"].isna().mean() > 0.01                     # missing values
    assert df["amount"].skew() > 3                                # skewed
    assert df["merchant_id"].nunique() > 300                      # high cardinality
    assert df["event_time"].is_monotonic_increasing
    assert df["transaction_id"].is_unique


def test_chunks_compose_deterministically():
    spec = SynthSpec(rows=10_000, seed=4)
    whole = generate_chunk(spec, 0, 10_000)
    again = generate_chunk(spec, 0, 10_000)
    assert whole.equals(again)
    second = generate_chunk(spec, 5_000, 5_000)
    assert second["transaction_id"].iloc[0] == 5_000
    assert second["event_time"].iloc[0] > whole["event_time"].iloc[4_000]


def test_drift_knobs_change_the_data_after_drift_start():
    base = SynthSpec(rows=60_000, seed=2)
    clean = generate_chunk(base, 0, 60_000)
    late = clean["event_time"] >= base.drift_ts
    for kind, check in [
        ("covariate", lambda d: d.loc[late, "amount"].median() > 1.5 * clean.loc[late, "amount"].median()),
        ("label", lambda d: d.loc[late, "is_fraud"].mean() > 1.5 * clean.loc[late, "is_fraud"].mean()),
        ("concept", lambda d: (d.loc[late, "is_fraud"] != clean.loc[late, "is_fraud"]).mean() > 0.02),
    ]:
        drifted = generate_chunk(SynthSpec(rows=60_000, seed=2, drift=kind), 0, 60_000)
        assert check(drifted), kind
        # before the drift start nothing changes
        assert drifted.loc[~late, "is_fraud"].equals(clean.loc[~late, "is_fraud"]), kind
