"""The training half's stage functions: what the threshold, evaluate and register steps
(``pipeline/steps.py``) call.

In: the config, the featurized data (``DataResult``) and its in-memory splits, the search's
best configuration and the refitted model, the champion (its version and bundle) if there is
one. Out: the decision threshold, the candidate's and champion's evaluations on the raw test
rows, and a registered model version (its MLflow run, bundle and alias).

The train package, ray and pandas are imported where they are used (a measured import cost): a
rerun whose steps are all cached imports none of them.
"""
from __future__ import annotations

import tempfile

import numpy as np
import pyarrow.parquet as pq

from mlops_ray._version import __version__
from mlops_ray.config import Config
from mlops_ray.monitor import thresholds
from mlops_ray.monitor.reference import SAMPLE, build_reference
from mlops_ray.pipeline.data import DataResult
from mlops_ray.registry import bundle, lineage
from mlops_ray.storage.catalog import Catalog
from mlops_ray.storage.fs import for_ray
from mlops_ray.storage.state import read_head, read_state, state_path
from mlops_ray.storage.store import Store
from mlops_ray.train import evaluate as ev
from mlops_ray.train import plots
from mlops_ray.train import tune as T
from mlops_ray.train.score import score_test
# Imported where used, for their import cost (python -X importtime): ray 0.7 s, pandas 0.4 s.


def search_summary(search) -> dict:
    """A search's result without its trials: what the run's result, its registration record and
    the bundle's metadata keep (the trials are in the MLflow run's ``tuning.json``)."""
    return {k: v for k, v in search.to_dict().items() if k != "trials"}


def choose_threshold(cfg: Config, splits, search, booster, strategy: str) -> dict | None:
    """A binary model's decision threshold (``model.threshold``), chosen on the validation split's
    predictions by a model that has not seen it: the final model when it was refitted on the training
    split alone, otherwise the same configuration fitted on it (one more fit, of the final one's size).
    A distributed refit on train+valid is not repeated: its own (in-sample) predictions are used and
    the choice says so."""
    rule = cfg.model.threshold
    if cfg.model.task != "binary":
        return None
    if isinstance(rule, (int, float)):
        return ev.choose_threshold(None, None, rule)
    if not splits.rows["valid"]:
        return ev.choose_threshold(np.empty(0), np.empty(0), rule)        # 0.5, saying why
    in_sample = cfg.model.refit == "train_valid" and strategy == "distributed"
    model = booster
    if cfg.model.refit == "train_valid" and not in_sample:
        model = T.train_final(splits=splits, model=cfg.model.model_copy(update={"refit": "best_trial"}),
                              tune_cfg=cfg.tune, search=search, strategy=strategy)
    p = bundle.predict_features(model, splits.X["valid"], splits.spec)
    choice = ev.choose_threshold(splits.y["valid"], p, rule)
    if in_sample:
        choice["note"] = "chosen on predictions of the final model, which was refitted on the validation rows too"
    return choice


def evaluate(cfg: Config, data: DataResult, booster, champion, choice: dict | None = None):
    """Score challenger (and champion) on the raw test rows; each model applies its own features
    and its own decision threshold (the champion's from its bundle)."""
    import ray


    models = {"candidate": (bytes(booster.save_raw("ubj")), data.spec.to_dict())}
    if champion:
        models["champion"] = (bytes(champion[1].booster.save_raw("ubj")), champion[1].spec.to_dict())
    if data.split_rows.get("test"):     # the raw test rows featurize kept (not the source, which may have changed)
        path, fs = for_ray(Catalog(cfg.store, cfg.name).test_raw_dir(data.key, uri=True))
        scored = score_test(ray.data.read_parquet(path, filesystem=fs), cfg.data, None, models,
                            cfg.model.slice_column, split_done=True)
    else:
        scored = {"y": np.empty(0), **{f"p_{name}": np.empty(0) for name in models}}
    slices = None
    if cfg.model.slice_column and "slice" in scored:
        import pandas as pd
        slices = pd.Series(scored["slice"], name=cfg.model.slice_column)
    cand = ev.evaluate(cfg.model.task, scored["y"], scored["p_candidate"], choice["value"] if choice else 0.5, slices,
                       classes=data.spec.classes)
    cand.threshold_choice = choice
    champ_threshold = None
    if champion:        # the champion's threshold as it is served now (feedback may have re-chosen it)
        champ_threshold = thresholds.current(Store(cfg.store), cfg.name, str(champion[0]), champion[1].metadata) \
            if cfg.model.task == "binary" else champion[1].threshold
    champ = ev.evaluate(cfg.model.task, scored["y"], scored["p_champion"], champ_threshold, slices) \
        if champion else None
    if champ is not None and slices is not None:
        gated = [k for k in set(cand.slices) & set(champ.slices) - {ev.SKIPPED}
                 if (cand.slices[k].get("n") or 0) >= cfg.gate.min_slice_rows]
        cand.slice_noise = ev.slice_noise(cfg.model.task, cfg.tune.metric, scored["y"], scored["p_candidate"],
                                          scored["p_champion"], slices, (cand.threshold, champ.threshold), gated,
                                          seed=cfg.tune.seed)
    cand.curves = {"p": scored["p_candidate"], "y": scored["y"]}   # for plots only, not serialised
    overlap = champion_overlap(cfg, champion[1], scored.get("key")) if champion else None
    return cand, champ, overlap


def champion_overlap(cfg: Config, champion, test_keys) -> dict | None:
    """How many of the test rows the champion was trained on (its data's training-row keys, kept by
    featurize); None when the champion's data is no longer in the store or predates the keys."""
    store = Store(cfg.store)
    key = champion.metadata.get("data_key")
    path = Catalog(store, cfg.name).train_keys(key) if key else None
    if test_keys is None or not path or not store.exists(path):
        return None
    with store.fs.open_input_file(path) as f:
        table = pq.read_table(f)
    rate = float((table.schema.metadata or {}).get(b"rate", b"1.0"))
    return ev.champion_overlap(test_keys, table.column("key").to_numpy(), rate)


def register(cfg: Config, registry, data: DataResult, splits, search, booster, evaluation, champ_eval, decision,
             reference_inputs: dict, strategy: str, progress) -> tuple[str, str]:
    """Log the run to MLflow (parameters, metrics, the trials as child runs, plots), write the
    bundle and register it as a version; move the alias the gate's decision earns. Returns the
    version and the run's id."""

    valid_pred = bundle.predict_features(booster, splits.X["valid"], data.spec) if splits.rows["valid"] \
        else evaluation.curves["p"]
    reference = build_reference(splits.train_sample(SAMPLE, cfg.tune.seed), data.spec, valid_pred,
                                cfg.model.task, bins=cfg.monitor.bins, seed=cfg.tune.seed)
    reference["inputs"] = reference_inputs
    metadata = {
        "pipeline": cfg.name, "task": cfg.model.task, "label": cfg.data.label, "mlops_ray": __version__,
        "config_hash": cfg.config_hash, "data_key": data.key, "dataset": {
            "fingerprint": data.source.get("fingerprint"), "fingerprint_kind": data.source.get("fingerprint_kind"),
            "rows": data.source.get("rows"), "split_rows": data.split_rows, "sources": data.source.get("sources")},
        "seeds": {"split": cfg.data.split.seed, "tune": cfg.tune.seed}, "strategy": strategy,
        "tuning": search_summary(search),
        "evaluation": evaluation.to_dict(), "gate": decision.to_dict(), "lineage": lineage(),
        "threshold": evaluation.threshold_choice,
    }
    if cfg.model.task == "binary":      # for the HTML report (200 points each)
        metadata["curves"] = {"roc": ev.roc_points(evaluation.curves["y"], evaluation.curves["p"]),
                              "pr": ev.pr_points(evaluation.curves["y"], evaluation.curves["p"])}
    status = "passed" if decision.passed else "rejected"
    with registry.start_run(f"{cfg.name}-{data.key[:8]}", tags={"gate": status, "strategy": strategy}) as run:
        run.log_params({"config": cfg.model_dump(mode="json", by_alias=True), "best": search.best_config,
                        "best_iteration": search.best_iteration, "lineage": metadata["lineage"],
                        "dataset_fingerprint": metadata["dataset"]["fingerprint"], "config_hash": cfg.config_hash})
        run.log_metrics({f"test_{k}": v for k, v in evaluation.metrics.items()})
        run.log_metrics({f"valid_{search.metric}": search.best_score, "tune_seconds": search.seconds,
                         "n_trials": len(search.trials)})
        if champ_eval:
            run.log_metrics({f"champion_test_{k}": v for k, v in champ_eval.metrics.items()})
        run.log_text(cfg.to_yaml(), "config.yaml")
        run.log_dict(data.validation.to_dict(), "validation.json")
        run.log_dict(data.spec.to_dict(), "feature_spec.json")
        run.log_dict(evaluation.to_dict(), "evaluation.json")
        run.log_dict(search.to_dict(), "tuning.json")
        run.log_dict(decision.to_dict(), "gate.json")
        for i, trial in enumerate(search.trials):
            run.child_run(f"trial-{i:03d}", params=trial.get("config") or {},
                          metrics={k: trial[k] for k in (search.metric, "best_iteration", "iterations")
                                   if isinstance(trial.get(k), (int, float))})
        try:
            run.log_figure(plots.tuning_history(search.trials, search.metric, search.mode), "plots/tuning.png")
            run.log_figure(plots.feature_importance(booster.get_score(importance_type="gain")),
                           "plots/feature_importance.png")
            if cfg.model.task == "binary":
                roc = ev.roc_points(evaluation.curves["y"], evaluation.curves["p"])
                pr = ev.pr_points(evaluation.curves["y"], evaluation.curves["p"])
                run.log_figure(plots.curve(roc["fpr"], roc["tpr"], "false positive rate", "true positive rate",
                                           "ROC"), "plots/roc.png")
                run.log_figure(plots.curve(pr["recall"], pr["precision"], "recall", "precision", "PR"),
                               "plots/pr.png")
        except Exception as e:  # a plot must never lose a run
            run.set_tags({"plot_error": str(e)[:200]})
        with tempfile.TemporaryDirectory() as d:
            bundle.write_bundle(d, booster, data.spec, reference, metadata)
            version = registry.register(run, d, tags={"gate": status, "data_key": data.key})
        if decision.passed and serving(cfg) and not cfg.retrain.promote_directly:
            registry.set_alias("challenger", version)
            progress("register", f"version {version} passed the gate and is the challenger; the champion moves "
                                 f"when `mlops-ray rollout CONFIG --version {version}` promotes it")
        elif decision.passed:
            registry.set_alias("champion", version)
            progress("register", f"version {version} passed the gate and is now champion")
        else:
            registry.tag_version(version, "rejected", "; ".join(decision.failures)[:5000])
            run.set_tags({"rejected_reason": "; ".join(decision.failures)[:5000]})
            progress("register", f"version {version} registered as rejected; champion unchanged")
        return version, run.run_id


def serving(cfg: Config) -> bool:
    """Is a version of this pipeline served (a serving state in the store)? Then a gate pass only
    makes a challenger: the champion is what a rollout promoted."""
    try:
        return read_state(state_path(cfg.store, cfg.name)) is not None and (
            bool(cfg.ray.address) or read_head(cfg.store, cfg.name) is not None)
    except Exception:                  # an unreadable state: be conservative, do not move the champion
        return True
