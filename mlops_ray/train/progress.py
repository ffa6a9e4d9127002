"""Progress of a Tune search: what has happened so far, and how it is told.

In: Tune's trial events (start, result, complete, error, recover) through ``SearchWatch``, a Tune
callback. Out: calls on the run's progress function, ``progress(stage, message)``:

- a plain 2-argument function gets one line per finished trial, e.g. ``trial 3/16 done (stopped
  early at 40 rounds): auc 0.7012, best 0.7120, 2 running, ~35 s left``;
- a progress function that also has the ``SearchView`` methods (the CLI's, in a terminal) is
  handed the whole ``SearchState`` on every event instead, to draw it live, and told when the
  search ended or raised so that it can leave one summary line.

``SearchState`` and the text functions are pure (a clock is passed in); only ``SearchWatch``
knows Tune's trial objects.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

from ray.tune import Callback

Progress = Callable[[str, str], None]     # (stage, message), as everywhere in the package
logger = logging.getLogger(__name__)


@runtime_checkable
class SearchView(Protocol):
    """Optional methods of a progress function: show a search live instead of a line per trial."""

    def trials(self, state: "SearchState") -> None:
        """Called on every trial event with a copy of the search's state."""

    def trials_ended(self, state: "SearchState", error: BaseException | None) -> None:
        """The search returned (``error`` None) or raised: finish the display."""


@dataclass
class Finished:
    """One trial that has just ended: its place in the count, score and how it ended."""
    number: int
    score: float | None
    rounds: int | None
    stopped_early: bool = False
    failed: bool = False


@dataclass
class SearchState:
    """Counts of a search's trials, its best score and the timings the time left is estimated from.

    A trial stopped early is one the scheduler (ASHA, median stopping, the time budget) ended: its
    last report lacks ``final: True``, which a trial sends only when XGBoost finished its rounds or
    its own early stopping."""
    metric: str
    mode: str
    total: int
    time_budget_s: float | None = None
    clock: Callable[[], float] = time.monotonic
    started: float | None = None
    done: int = 0
    stopped_early: int = 0
    failed: int = 0
    best: float | None = None
    running: dict = field(default_factory=dict)        # trial id -> when it started
    rounds: dict = field(default_factory=dict)         # trial id -> rounds reported so far
    peak_running: int = 0
    durations: list = field(default_factory=list)      # seconds of each finished trial

    def __post_init__(self):
        if self.started is None:
            self.started = self.clock()

    def copy(self) -> "SearchState":
        return dataclasses.replace(self, running=dict(self.running), rounds=dict(self.rounds),
                                   durations=list(self.durations))

    def better(self, v: float | None) -> bool:
        return v is not None and v == v and (self.best is None or (v > self.best if self.mode == "max"
                                                                   else v < self.best))

    # ----------------------------------------------------------------- events
    def start(self, trial_id: str) -> None:
        self.running[trial_id] = self.clock()
        self.peak_running = max(self.peak_running, len(self.running))

    def result(self, trial_id: str, result: dict) -> None:
        if result.get("rounds") is not None:
            self.rounds[trial_id] = int(result["rounds"])

    def complete(self, trial_id: str, result: dict) -> Finished | None:
        """A trial ended (None: it never started, e.g. dropped at the time budget)."""
        if trial_id not in self.running and not result:
            return None
        self._end(trial_id)
        score = result.get(self.metric)
        if self.better(score):
            self.best = float(score)
        early = not result.get("final", False)
        self.stopped_early += early
        rounds = result.get("rounds")
        return Finished(self.done, score, int(rounds) if rounds is not None else None, stopped_early=early)

    def error(self, trial_id: str) -> Finished:
        """A trial failed for good (its retries, tune.max_failures, ran out)."""
        self._end(trial_id)
        self.failed += 1
        return Finished(self.done, None, None, failed=True)

    def recover(self, trial_id: str) -> None:
        """A trial failed and will be retried from scratch: it is pending again."""
        self.running.pop(trial_id, None)
        self.rounds.pop(trial_id, None)

    def _end(self, trial_id: str) -> None:
        began = self.running.pop(trial_id, None)
        self.rounds.pop(trial_id, None)
        if began is not None:
            self.durations.append(self.clock() - began)
        self.done += 1

    # ----------------------------------------------------------------- time
    def elapsed(self) -> float:
        return self.clock() - self.started

    def seconds_left(self) -> float | None:
        """None until a trial has finished. The trials not done yet take the mean finished trial's time
        each, less what the running ones have had, spread over the trials that ran at once (at most as
        many as are left); capped by ``tune.time_budget_s``."""
        if not self.durations:
            return None
        left = self.total - self.done
        if left <= 0:
            return 0.0
        now, mean = self.clock(), sum(self.durations) / len(self.durations)
        had = sum(min(now - t, mean) for t in self.running.values())
        lanes = max(1, min(self.peak_running, left))
        est = max(0.0, left * mean - had) / lanes
        if self.time_budget_s:
            est = min(est, max(0.0, self.time_budget_s - self.elapsed()))
        return est


# --------------------------------------------------------------------------- text
def duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 600:
        return f"{s // 60} min {s % 60} s"
    if s < 3600:
        return f"{round(s / 60)} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def score(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def time_left(state: SearchState) -> str:
    left = state.seconds_left()
    if left is None:
        return "estimating time left…"
    return "finishing…" if state.done >= state.total else f"~{duration(left)} left"


def trial_line(state: SearchState, f: Finished) -> str:
    """The line a plain progress function gets when a trial ends."""
    if f.failed:
        head = f"trial {f.number}/{state.total} failed: "
    else:
        how = (f"stopped early at {f.rounds} rounds" if f.stopped_early else f"{f.rounds} rounds") \
            if f.rounds is not None else ("stopped early" if f.stopped_early else "")
        head = f"trial {f.number}/{state.total} done" + (f" ({how})" if how else "") + \
            f": {state.metric} {score(f.score)}, "
    tail = [f"best {score(state.best)}"]
    if state.running:
        tail.append(f"{len(state.running)} running")
    if state.done < state.total:
        tail.append(time_left(state))
    return head + ", ".join(tail)


def counts(state: SearchState) -> str:
    """``6/16 trials done, 3 running, 2 stopped early, 0 failed``"""
    return (f"{state.done}/{state.total} trials done, {len(state.running)} running, "
            f"{state.stopped_early} stopped early, {state.failed} failed")


def summary(state: SearchState, error: BaseException | None = None) -> str:
    """The line left when a search ends: how it ended, the counts and the best score. A search that
    returned with trials left was stopped: by ``tune.time_budget_s``, or by Tune itself on a first
    Ctrl-C (it then ends the experiment and returns what it has)."""
    took = duration(state.elapsed())
    ended = (f"{state.stopped_early} stopped early, {state.failed} failed); "
             f"best {state.metric} {score(state.best)}")
    if error is None and state.done >= state.total:
        return f"{state.done}/{state.total} trials done in {took} ({ended}"
    how = ("stopped" if error is None else "interrupted" if isinstance(error, KeyboardInterrupt)
           else f"stopped by {type(error).__name__}")
    return f"{how} after {took}: {state.done}/{state.total} trials done ({len(state.running)} unfinished, {ended}"


# --------------------------------------------------------------------------- the Tune callback
class SearchWatch(Callback):
    """A Tune callback that keeps a ``SearchState`` and tells the progress function about it.

    Use it as a context manager around ``tuner.fit()``, so that a live display is finished even
    when the search raises (KeyboardInterrupt included). Tune pickles its run config (callbacks
    included) into the experiment state; the progress function (which may hold a console) is left
    out of the pickle and comes back as None.
    """

    def __init__(self, progress: Progress | None, metric: str, mode: str, total: int, max_failures: int = 0,
                 time_budget_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.progress, self.max_failures = progress, max_failures
        self.state = SearchState(metric, mode, total, time_budget_s, clock)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "progress"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.progress = None

    _plain = False       # set when the view failed

    @property
    def _view(self) -> SearchView | None:
        return self.progress if not self._plain and isinstance(self.progress, SearchView) else None

    def _show(self) -> None:
        if self._view:
            try:
                self._view.trials(self.state.copy())
            except Exception:       # a display must not end the search: fall back to a line per trial
                logger.warning("the live search display failed; showing a line per trial", exc_info=True)
                self._plain = True

    def _finished(self, f: Finished | None) -> None:
        if f is None or not self.progress:
            return
        if self._view:
            self._show()
        else:
            self.progress("tune", trial_line(self.state, f))

    # ----------------------------------------------------------------- Tune's hooks
    def on_trial_start(self, iteration, trials, trial, **info):
        self.state.start(trial.trial_id)
        self._show()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.state.result(trial.trial_id, result or {})
        self._show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finished(self.state.complete(trial.trial_id, trial.last_result or {}))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finished(self.state.error(trial.trial_id))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.state.recover(trial.trial_id)
        if self.progress:      # Tune has counted this failure already
            self.progress("tune", f"trial {trial.trial_id} failed; retry {trial.num_failures} of at most "
                                  f"{self.max_failures} (tune.max_failures)")
        self._show()

    # ----------------------------------------------------------------- around fit()
    def __enter__(self) -> "SearchWatch":
        return self

    def __exit__(self, et, ev, tb) -> bool:
        if isinstance(self.progress, SearchView):     # also after a failure: whatever was drawn is finished
            self.progress.trials_ended(self.state.copy(), ev)
        return False
