"""The runner: runs the table of steps (``pipeline/steps.py``) for ``mlops-ray run``.

In: a config and ``RunOptions`` (``--force``, ``--from``, ``--only``, ``--resume``). Out: a
``RunResult`` (the data, the search, the evaluations, the gate's decision, the version). It
alone decides what runs:

* **plan**: from the values wanted (the featurized data and the registration; with ``--only X``,
  X's outputs) back through the table. A stored value whose record is under this run's key is
  read back and its producer skipped, unless forced (``--force``; ``--from X``: X and every step
  that depends on it; ``--only X``: X). Values held in memory (a Ray dataset, the parsed rows)
  are recomputed by their producers; so are the refitted model, the evaluations and the gate's
  decision in a whole run (they are read back by ``--only`` runs alone, at the last attempt). With
  ``--only X`` a missing stored input is refused, naming the step to run first;
* **run**: the planned steps in table order, Ray started once if one needs it and never for a
  rerun whose steps are all cached (the caches are found on the source's metadata and the
  store); each step timed under its stage; the gate's retry policy (``Retry``) reruns the
  steps from tune with the next attempt's budget.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from mlops_ray.config import Config
from mlops_ray.errors import ConfigError
from mlops_ray.pipeline.data import DataResult, Progress, inspect
from mlops_ray.pipeline.steps import (GIVEN, NAMES, PRODUCER, STEP, STEPS, STORED, TABLE, TRAINING, Context, Step,
                                      latest_attempt)
from mlops_ray.pipeline.training import search_summary
from mlops_ray.registry import Registry
from mlops_ray.runtime import ray_runtime, require_resources, require_shared_store
from mlops_ray.storage.store import Store
from mlops_ray.train import evaluate as ev
from mlops_ray.train import xgb as X

DATA_STEPS = STEPS[:3]


def _noop(step: str, message: str) -> None:
    pass


def downstream(name: str) -> set[str]:
    """Step ``name`` and every step that consumes its outputs, directly or not."""
    found, outputs = {name}, set(STEP[name].outputs)
    for step in TABLE[NAMES.index(name) + 1:]:
        if outputs & set(step.inputs):
            found.add(step.name)
            outputs |= set(step.outputs)
    return found


@dataclass
class RunOptions:
    force: bool = False
    from_step: str | None = None
    only: str | None = None
    resume: bool = False
    verbose: bool = False

    def check(self) -> None:
        """``--from``/``--only`` name a step of the table (ConfigError, exit 2, listing them)."""
        for flag, step in (("--from", self.from_step), ("--only", self.only)):
            if step is not None and step not in STEP:
                raise ConfigError(f"{flag} {step!r} is not a step; steps: {', '.join(NAMES)}")

    def forced(self, step: str) -> bool:
        if self.force or self.only == step:
            return True
        return self.from_step is not None and step in downstream(self.from_step)


@dataclass
class RunResult:
    data: DataResult
    search: dict | None = None
    evaluation: dict | None = None
    champion_evaluation: dict | None = None
    gate: dict | None = None
    version: str | None = None
    promoted: bool = False
    run_id: str | None = None
    aliases: list = field(default_factory=list)        # read from the registry after the run, never cached
    cached_steps: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"data": self.data.to_dict(), "search": self.search, "evaluation": self.evaluation,
                "champion_evaluation": self.champion_evaluation, "gate": self.gate, "version": self.version,
                "promoted": self.promoted, "run_id": self.run_id, "aliases": self.aliases,
                "cached_steps": self.cached_steps,
                "timings_s": {k: round(v, 3) for k, v in self.timings.items()}}


class Runner:
    """Plans and runs steps of the table for one source and config (see the module docstring)."""

    def __init__(self, ctx: Context, opts: RunOptions):
        self.ctx, self.opts = ctx, opts
        self.values: dict = {}
        self.cached: list[str] = []
        self.timings: dict[str, float] = {}
        self.targets: tuple = ()

    # ------------------------------------------------------------------ plan
    def plan(self, targets) -> list[Step]:
        """The steps that produce ``targets``, in table order (see the module docstring)."""
        ctx, only = self.ctx, self.opts.only
        run: set[str] = set()
        missing: dict[str, Step] = {}

        def need(name: str) -> None:
            if name in self.values or name in GIVEN:
                return
            step, stored = PRODUCER[name], STORED.get(name)
            if step.name in run:
                return
            if stored and not self.opts.forced(step.name) and (only or not stored.only) and stored.exists(ctx):
                return
            if only and step.name != only and stored:
                missing[name] = step
                return
            run.add(step.name)
            for inp in step.inputs:
                need(inp)

        for target in targets:
            need(target)
        if missing:
            first = min((self._first_to_run(s) for s in missing.values()), key=lambda s: NAMES.index(s.name))
            what = ", ".join(dict.fromkeys(f"{STORED[n].what} (from {s.name}{self._stale(n)})"
                                           for n, s in missing.items()))
            raise ConfigError(f"--only {only} needs what is not in the store for this data and config: {what}. "
                              f"Run the {first.name} step first (`mlops-ray run CONFIG --only {first.name}`), "
                              f"or run without --only")
        self.ctx.planned = self.ctx.planned | run
        return [s for s in TABLE if s.name in run]

    def _first_to_run(self, step: Step) -> Step:
        """The earliest step that must run before ``step`` can: the producer of a missing stored
        input, followed back until every stored input it needs is there."""
        for name in step.inputs:
            stored = STORED.get(name)
            if stored and not stored.exists(self.ctx):
                return self._first_to_run(PRODUCER[name])
        return step

    def _stale(self, name: str) -> str:
        why = STORED[name].stale(self.ctx) if STORED[name].stale else None
        return f"; {why}" if why else ""

    # ------------------------------------------------------------------ run
    def run(self, targets, *, training_checks: bool = False, resources: bool = False) -> None:
        """Plan ``targets`` and run the plan: the training config checked before Ray starts when a
        training step runs; Ray started only when a planned step needs it."""
        self.targets = tuple(targets)
        steps = self.plan(targets)
        if training_checks and TRAINING & {s.name for s in steps}:
            check_training_config(self.ctx.cfg)
        cfg = self.ctx.cfg
        with contextlib.ExitStack() as stack:
            if any(s.ray for s in steps):
                stack.enter_context(ray_runtime(cfg.ray, verbose=self.opts.verbose))
                require_shared_store(cfg)
                if resources:
                    require_resources(gpus=cfg.tune.gpus_per_trial, cpus=cfg.tune.cpus_per_trial)
            i = 0
            while i < len(steps):
                step = steps[i]
                outputs = self._run_step(step)
                if step.retry and not self.opts.only:
                    steps[i + 1:i + 1] = self._retry(step, outputs)
                i += 1
        if self.opts.only:
            rest = [s.name for s in TABLE[NAMES.index(self.opts.only) + 1:]]
            if rest:
                self.ctx.progress(STEP[self.opts.only].stage, f"done (--only {self.opts.only}: "
                                                              f"{', '.join(rest)} skipped)")

    def _run_step(self, step: Step) -> dict:
        inputs = {name: self.get(name) for name in step.inputs}
        t = time.perf_counter()
        outputs = step.fn(self.ctx, **inputs)
        label = step.stage + (str(self.ctx.attempt) if self.ctx.attempt and step.key.name == "train" else "")
        self.timings[label] = self.timings.get(label, 0.0) + time.perf_counter() - t
        self.values.update(outputs)
        return outputs

    def _retry(self, step: Step, outputs: dict) -> list[Step]:
        """The steps of the retry policy's next attempt, or none (passed, or no retries left)."""
        reason = step.retry.failed(outputs)
        if not reason or self.ctx.attempt >= step.retry.times(self.ctx.cfg):
            return []
        self.ctx.progress(step.name, reason)
        self.ctx.attempt += 1
        for redo in TABLE[NAMES.index(step.retry.rerun_from):NAMES.index(step.name) + 1]:
            for out in redo.outputs:
                self.values.pop(out, None)
        return self.plan(step.outputs)

    def get(self, name: str):
        """A value of this run: computed, given, or read back from the store (then its stages
        are reported cached)."""
        if name not in self.values:
            if name in GIVEN:
                self.values[name] = GIVEN[name](self.ctx)
            else:
                stored = STORED[name]
                self.values[name] = stored.load(self.ctx)
                self.cached += stored.covers
        return self.values[name]

    # ------------------------------------------------------------------ results
    def data_result(self) -> DataResult:
        if "features" not in self.values and "validation" in self.values:      # --only validate
            result = DataResult(source=self.ctx.source.describe(), validation=self.values["validation"])
        else:
            result = self.get("features")
        result.timings.update({k: v for k, v in self.timings.items() if k in DATA_STEPS})
        return result

    def result(self) -> RunResult:
        """The run's result, as ``run`` has always reported it; raises GateRejected (exit 4) when
        the candidate registered (now or by the cached run) was rejected."""
        v = self.values
        result = RunResult(data=self.data_result())
        rec = self.get("registration") if "registration" in self.targets else None
        search = v.get("search")
        result.search = search_summary(search) if search is not None else (rec or {}).get("search")
        result.evaluation = v["evaluation"].to_dict() if "evaluation" in v else (rec or {}).get("evaluation")
        result.champion_evaluation = v["champion_evaluation"].to_dict() if v.get("champion_evaluation") else None
        result.gate = v["decision"].to_dict() if "decision" in v else (rec or {}).get("gate")
        if rec is not None:
            result.version, result.promoted, result.run_id = rec["version"], rec["promoted"], rec.get("run_id")
            result.aliases = self.ctx.registry.aliases_of(result.version)
        result.cached_steps = sorted(set(self.cached), key=STEPS.index)     # in the lifecycle's order
        result.timings = {k: t for k, t in self.timings.items() if k not in DATA_STEPS}
        if rec is not None and not rec["promoted"] and result.gate:
            from mlops_ray.train import evaluate as ev  # measured import cost, see training.py
            decision = v.get("decision") or ev.GateDecision(
                passed=False, failures=list(result.gate.get("failures") or []),
                checks=list(result.gate.get("checks") or []), champion_version=result.gate.get("champion_version"))
            ev.raise_if_rejected(decision)
        return result


# --------------------------------------------------------------------------- entry points
def preflight(cfg: Config, opts: RunOptions):
    """What can fail before anything is read: the steps named, the store, the registry."""
    opts.check()
    Store(cfg.store).check_writable(cfg.name)
    registry = Registry(cfg.registry, cfg.store, cfg.name)
    registry.check_reachable()
    return registry


def check_training_config(cfg: Config) -> None:
    """The model, search and gate cross-checks, before any row is read. A cached registration passed
    them (its key holds these sections and the package version): a rerun with every step cached
    skips them, and the XGBoost and scikit-learn imports they need (0.9 s of a 3.7 s rerun)."""

    X.check_model_config(cfg.model, cfg.tune)
    ev.check_gate_metrics(cfg.gate, cfg.model.task)


def run_pipeline(cfg: Config, opts: RunOptions | None = None, progress: Progress = _noop) -> RunResult:
    """Raw data to a gated, registered model version. Raises GateRejected (exit 4) after
    registering a rejected candidate with its reason; the champion alias is left alone."""
    opts = opts or RunOptions()
    registry = preflight(cfg, opts)
    # the caches are checked on the source's metadata before Ray starts: an unchanged rerun starts none
    source = inspect(cfg, progress)
    ctx = Context(cfg, Store(cfg.store), source, progress, resume=opts.resume, registry=registry)
    if opts.only in TRAINING and opts.only != "tune":
        ctx.attempt = latest_attempt(ctx)        # the attempt the gate's retry left, as a whole run did
    runner = Runner(ctx, opts)
    runner.run(STEP[opts.only].outputs if opts.only else ("features", "reference_inputs", "registration"),
               training_checks=True, resources=True)
    return runner.result()


def cached_data(cfg: Config, source, progress: Progress = _noop) -> DataResult | None:
    """The featurized data of an unchanged source and config, from the store (no Ray), or None."""
    ctx = Context(cfg, Store(cfg.store), source, progress)
    if not (STORED["features"].exists(ctx) and STORED["reference_inputs"].exists(ctx)):
        return None
    return STORED["features"].load(ctx)


def prepare_data(cfg: Config, *, verbose: bool = False, progress: Progress = _noop,
                 write: bool = True, force: bool = False, source=None) -> DataResult:
    """ingest → validate → featurize → reference (``write=False``: ingest → validate, nothing
    cached). Raises DataValidationError (exit 3) before featurizing. Ray starts only when there is
    something to read: an unchanged source's cached result is found on the metadata alone."""
    source = source or inspect(cfg, progress)
    runner = Runner(Context(cfg, Store(cfg.store), source, progress),
                    RunOptions(force=force or not write, verbose=verbose))
    runner.run(("features", "reference_inputs") if write else ("validation",))
    return runner.data_result()
