"""Figures logged with each run: tuning history, feature importance, ROC and PR curves.

In: plain lists and dicts (search trials, booster scores, curve points). Out: matplotlib
figures (Agg backend; nothing is shown or written here: the registry logs them).
"""
from __future__ import annotations

from contextlib import contextmanager
# Imported where used, for their import cost (python -X importtime): matplotlib 0.5 s.


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


@contextmanager
def _figure(figsize: tuple[float, float]):
    """A new figure and axes; closed if drawing fails (the caller closes it after logging).
    pyplot keeps every open figure, and the retrain loop runs for days."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=figsize)
    try:
        yield fig, ax
    except BaseException:
        plt.close(fig)
        raise


def tuning_history(trials: list[dict], metric: str, mode: str):
    with _figure((6, 3.5)) as (fig, ax):
        values = [t.get(metric) for t in trials]
        xs = [i for i, v in enumerate(values) if v is not None]
        ys = [values[i] for i in xs]
        best, run = [], None
        for y in ys:
            run = y if run is None else (max(run, y) if mode == "max" else min(run, y))
            best.append(run)
        ax.scatter(xs, ys, s=14, label="trial")
        ax.plot(xs, best, color="C1", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel(f"valid {metric}")
        ax.legend()
        fig.tight_layout()
    return fig


def feature_importance(scores: dict[str, float], top: int = 25):
    items = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)[:top][::-1]
    with _figure((6, 0.25 * max(len(items), 4) + 1)) as (fig, ax):
        ax.barh([k for k, _ in items], [v for _, v in items])
        ax.set_xlabel("gain")
        fig.tight_layout()
    return fig


def curve(x: list[float], y: list[float], xlabel: str, ylabel: str, title: str):
    with _figure((4, 4)) as (fig, ax):
        ax.plot(x, y)
        if xlabel == "false positive rate":
            ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        fig.tight_layout()
    return fig
