"""A search's progress (mlops_ray/train/progress.py and the CLI's live display): the line per trial a
plain progress function gets, counting trials stopped early, the time left, and a terminal display
that is finished when the search raises. Tune's callback is driven with fake trials and a fake
clock; no Ray."""
import io
import pickle
import re
from types import SimpleNamespace

import pytest
from rich.console import Console
from rich.live import Live

from mlops_ray.train.progress import SearchState, SearchWatch

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Search:
    """Drives a SearchWatch the way Tune's controller calls its hooks."""

    def __init__(self, progress, total=16, clock=None, **kw):
        self.clock = clock or Clock()
        self.watch = SearchWatch(progress, "auc", "max", total, max_failures=2, clock=self.clock, **kw)
        self.trials = {}

    def trial(self, tid):
        return self.trials.setdefault(tid, SimpleNamespace(trial_id=tid, last_result={}, num_failures=0))

    def start(self, *tids):
        for tid in tids:
            self.watch.on_trial_start(0, [], self.trial(tid))

    def result(self, tid, **result):
        self.trial(tid).last_result = result
        self.watch.on_trial_result(0, [], self.trial(tid), result)

    def complete(self, tid, **last):
        self.trial(tid).last_result = last or self.trial(tid).last_result
        self.watch.on_trial_complete(0, [], self.trial(tid))

    def error(self, tid):
        self.watch.on_trial_error(0, [], self.trial(tid))

    def recover(self, tid):
        self.trial(tid).num_failures += 1
        self.watch.on_trial_recover(0, [], self.trial(tid))


def plain(lines):
    def progress(stage, message):          # what a library user passes to mlops_ray.run(progress=...)
        lines.append(f"{stage}: {message}")
    return progress


def test_a_plain_progress_function_gets_one_line_per_finished_trial():
    lines = []
    s = Search(plain(lines), total=4)
    s.start("a", "b")
    s.clock.t = 10
    s.result("a", auc=0.69, rounds=40)
    assert lines == []                                # starts and intermediate results say nothing
    s.complete("a", auc=0.7012, rounds=40)            # no final: ASHA stopped it
    s.start("c")
    s.clock.t = 20
    s.complete("b", auc=0.7120, rounds=180, final=True, best_iteration=150)
    s.recover("c")
    s.start("c")
    s.error("c")
    s.start("d")
    s.clock.t = 30
    s.complete("d", auc=0.70, rounds=300, final=True)
    assert lines == [
        "tune: trial 1/4 done (stopped early at 40 rounds): auc 0.7012, best 0.7012, 1 running, ~10 s left",
        "tune: trial 2/4 done (180 rounds): auc 0.7120, best 0.7120, 1 running, ~10 s left",
        "tune: trial c failed; retry 1 of at most 2 (tune.max_failures)",
        "tune: trial 3/4 failed: best 0.7120, ~10 s left",
        "tune: trial 4/4 done (300 rounds): auc 0.7000, best 0.7120",
    ]


def test_trials_stopped_by_the_scheduler_are_counted_apart_from_finished_and_failed_ones():
    s = Search(plain([]), total=10)
    s.start("a", "b", "c", "d", "e")
    s.complete("a", auc=0.7, rounds=40)                              # ASHA: no final report
    s.complete("b", auc=0.7, rounds=120, final=True)                  # XGBoost's own early stopping
    s.complete("c", auc=0.7, rounds=300, final=True)                  # every round
    s.error("d")                                                      # retries ran out
    s.complete("e", auc=0.8, rounds=20)
    s.watch.on_trial_complete(0, [], SimpleNamespace(trial_id="z", last_result={}))   # dropped, never ran
    st = s.watch.state
    assert (st.done, st.stopped_early, st.failed, st.best, len(st.running)) == (5, 2, 1, 0.8, 0)


def test_min_mode_keeps_the_lowest_score_and_ignores_nan():
    st = SearchState("rmse", "min", 3, clock=Clock())
    for tid, v in [("a", 5.0), ("b", float("nan")), ("c", 4.0)]:
        st.start(tid)
        st.complete(tid, {"rmse": v, "final": True})
    assert st.best == 4.0


@pytest.mark.parametrize("total, events, now, left", [
    # nothing finished yet: no estimate
    (10, [("start", "a", 0), ("start", "b", 0)], 5, None),
    # 2 at once; a took 10 s; 9 left, b has had 10 of its 10 s: (9 * 10 - 10) / 2
    (10, [("start", "a", 0), ("start", "b", 0), ("done", "a", 10)], 10, 40.0),
    # 5 s later b has had its mean time (capped at 10) and c 5 s: (9 * 10 - 15) / 2
    (10, [("start", "a", 0), ("start", "b", 0), ("done", "a", 10), ("start", "c", 10)], 15, 37.5),
    # the last trial runs alone, however many ran at once before: 10 - 4
    (3, [("start", "a", 0), ("start", "b", 0), ("done", "a", 10), ("done", "b", 10), ("start", "c", 10)], 14, 6.0),
])
def test_time_left_is_the_mean_trial_time_over_the_trials_running_at_once(total, events, now, left):
    clock = Clock()
    st = SearchState("auc", "max", total, clock=clock)
    for kind, tid, t in events:
        clock.t = t
        st.start(tid) if kind == "start" else st.complete(tid, {"auc": 0.5, "final": True})
    clock.t = now
    assert st.seconds_left() == left


def test_time_left_is_capped_by_the_time_budget_and_zero_when_all_are_done():
    clock = Clock()
    st = SearchState("auc", "max", 2, time_budget_s=30, clock=clock)
    st.start("a")
    clock.t = 25
    st.complete("a", {"auc": 0.5})
    st.start("b")
    assert st.seconds_left() == 5.0                  # 25 s estimated, 5 s of budget left
    st.complete("b", {"auc": 0.5})
    assert st.seconds_left() == 0.0


def test_the_callback_pickles_without_its_progress_function():
    """Tune pickles its run config into the experiment state; a console does not pickle."""
    s = SearchWatch(lambda stage, m: None, "auc", "max", 4)
    s.on_trial_start(0, [], SimpleNamespace(trial_id="a"))
    back = pickle.loads(pickle.dumps(s))
    assert back.progress is None and back.state.total == 4 and list(back.state.running) == ["a"]
    back.on_trial_complete(0, [], SimpleNamespace(trial_id="a", last_result={"auc": 0.6}))   # still counts
    assert back.state.done == 1


# --------------------------------------------------------------------------- the terminal display
def terminal():
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=120, color_system=None, soft_wrap=True), buf


def text(buf) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())


def test_in_a_terminal_the_search_is_one_live_display_that_ends_as_one_line():
    from mlops_ray.cli.render import _LiveProgress
    console, buf = terminal()
    s = Search(_LiveProgress(console), total=16)
    with s.watch:
        s.start("a", "b", "c")
        assert "0/16 trials done, 3 running, 0 stopped early, 0 failed" in text(buf)
        assert "best auc - · elapsed 0 s · estimating time left…" in text(buf)
        s.clock.t = 12
        s.result("b", auc=0.69, rounds=70)
        s.complete("a", auc=0.7012, rounds=40)      # 15 left, 2 have had 12 s each: (15 * 12 - 24) / 3
        frame = text(buf).rsplit("tune ", 1)[-1]
        assert "1/16 trials done, 2 running, 1 stopped early, 0 failed" in frame
        assert "best auc 0.7012 · elapsed 12 s · ~52 s left · running at 70 rounds" in text(buf)
        assert "trial 1/16 done" not in text(buf)            # no line per trial in a terminal
        s.clock.t = 20
    out = text(buf)
    # fit() returned with trials left: the time budget, or Tune's own stop on a first Ctrl-C
    assert out.endswith("      tune stopped after 20 s: 1/16 trials done (2 unfinished, 1 stopped early, "
                        "0 failed); best auc 0.7012\n")
    with Live(console=console):                              # the display is gone: another may start
        pass
    s = Search(_LiveProgress(console), total=1)
    with s.watch:
        s.start("a")
        s.clock.t = 3
        s.complete("a", auc=0.6, rounds=30, final=True)
        assert "1/1 trials done" in text(buf) and "finishing…" in text(buf)
    assert text(buf).endswith("      tune 1/1 trials done in 3 s (0 stopped early, 0 failed); best auc 0.6000\n")


def test_the_live_display_is_finished_when_the_search_raises():
    from mlops_ray.cli.render import _LiveProgress
    console, buf = terminal()
    view = _LiveProgress(console)
    s = Search(view, total=8)
    with pytest.raises(KeyboardInterrupt), s.watch:
        s.start("a", "b")
        s.clock.t = 30
        s.complete("a", auc=0.65, rounds=100, final=True)
        raise KeyboardInterrupt
    assert text(buf).endswith("      tune interrupted after 30 s: 1/8 trials done (1 unfinished, 0 stopped early, "
                              "0 failed); best auc 0.6500\n")
    assert buf.getvalue().count("\x1b[?25h") == 1            # the cursor, hidden while live, is back
    with Live(console=console):
        pass
    # the next search (the gate's retry) gets a display of its own
    s2 = Search(view, total=8)
    with pytest.raises(RuntimeError), s2.watch:
        s2.start("x")
        raise RuntimeError("lost the head node")
    assert text(buf).endswith("stopped by RuntimeError after 0 s: 0/8 trials done (1 unfinished, 0 stopped early, "
                              "0 failed); best auc -\n")


def test_a_failing_display_falls_back_to_lines_and_does_not_stop_the_search():
    class Broken:
        def __init__(self):
            self.lines, self.ended = [], None

        def __call__(self, stage, message):
            self.lines.append(message)

        def trials(self, state):
            raise RuntimeError("no terminal after all")

        def trials_ended(self, state, error):
            self.ended = error

    view = Broken()
    s = Search(view, total=2)
    with s.watch:
        s.start("a")
        s.complete("a", auc=0.5, rounds=10, final=True)
    assert view.lines == ["trial 1/2 done (10 rounds): auc 0.5000, best 0.5000, ~0 s left"] and view.ended is None


def test_the_cli_draws_live_only_on_a_terminal_and_stays_quiet_with_json(monkeypatch):
    from mlops_ray.cli import render as cli
    assert cli._progress(True) is None
    monkeypatch.setattr(cli, "err", Console(file=io.StringIO(), force_terminal=True))
    assert isinstance(cli._progress(False), cli._LiveProgress)
    buf = io.StringIO()
    monkeypatch.setattr(cli, "err", Console(file=buf, force_terminal=False, soft_wrap=True))
    show = cli._progress(False)
    assert not hasattr(show, "trials")
    s = Search(show, total=2)
    s.start("a")
    s.complete("a", auc=0.5, rounds=10)
    assert buf.getvalue() == "      tune trial 1/2 done (stopped early at 10 rounds): auc 0.5000, best 0.5000, ~0 s left\n"
