"""The exception hierarchy: one class per outcome, each with a headline and an exit code.

The CLI maps each class to its exit code and prints ``headline: message``; ``--debug``
adds the traceback. Anything that is not an ``MlopsError`` is a bug (exit 1).
"""
from __future__ import annotations

import difflib


class ExitCode:
    OK = 0
    UNEXPECTED = 1
    CONFIG = 2          # usage or config error
    DATA = 3            # data missing, unreadable or invalid
    GATE = 4            # model rejected by the gate
    ROLLOUT = 5         # rollout aborted / rolled back
    REGISTRY = 6        # tracking server or registry unreachable / inconsistent
    RESOURCES = 7       # the cluster cannot provide what was asked (GPUs, CPUs)
    SERVING = 8         # serving cannot do what was asked (nothing deployed, a rollout running, ...)
    DRIFT = 9           # monitor: drift (or a live-metric drop) detected; the report is written
    MONITOR = 10        # monitoring cannot do what was asked (no window, no reference, bad labels, a loop running)
    JOB = 11            # a job submitted with `mlops-ray submit --wait` failed or was stopped
    INTERRUPTED = 130   # stopped by Ctrl-C (SIGINT); what can be resumed was saved


class MlopsError(Exception):
    """Base of every expected failure. ``str(err)`` is the full message with the fix."""

    headline = "mlops-ray error"
    exit_code = ExitCode.UNEXPECTED

    def __init__(self, message: str, *, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_dict(self) -> dict:
        return {
            "error": type(self).__name__,
            "headline": self.headline,
            "message": self.message,
            "exit_code": self.exit_code,
            **({"details": self.details} if self.details else {}),
        }


class ConfigError(MlopsError):
    headline = "Invalid configuration"
    exit_code = ExitCode.CONFIG


class DataSourceError(MlopsError):
    """The data cannot be found or read (missing path, empty dir, corrupt file, bad CSV)."""

    headline = "Cannot read data"
    exit_code = ExitCode.DATA


class DataValidationError(MlopsError):
    """The data was read but breaks the expectations in ``schema:``."""

    headline = "Data validation failed"
    exit_code = ExitCode.DATA

    def __init__(self, message: str, *, report=None, details: dict | None = None):
        super().__init__(message, details=details)
        self.report = report


class FeatureError(MlopsError):
    """Features cannot be fitted or applied (bad derived expression, no usable column)."""

    headline = "Feature engineering failed"
    exit_code = ExitCode.DATA


class GateRejected(MlopsError):
    headline = "Model rejected by the gate"
    exit_code = ExitCode.GATE


class RolloutAborted(MlopsError):
    headline = "Rollout aborted"
    exit_code = ExitCode.ROLLOUT


class RegistryError(MlopsError):
    headline = "Registry error"
    exit_code = ExitCode.REGISTRY


class ResourceError(MlopsError):
    headline = "Not enough cluster resources"
    exit_code = ExitCode.RESOURCES


class ServingError(MlopsError):
    """Serving cannot do what was asked: nothing deployed, a rollout already running, a
    version that cannot be served."""
    headline = "Serving error"
    exit_code = ExitCode.SERVING


class MonitorError(MlopsError):
    """Monitoring cannot do what was asked: an empty window, a log that does not match the
    model, a bundle without a reference profile, labels that cannot be joined, a second loop."""
    headline = "Monitoring error"
    exit_code = ExitCode.MONITOR


class Interrupted(MlopsError):
    """Ctrl-C stopped a step; the message says what was saved and how to continue."""
    headline = "Interrupted"
    exit_code = ExitCode.INTERRUPTED


class JobSubmitError(ResourceError):
    """A job cannot be submitted: the dashboard is unreachable, is not a Ray dashboard, or refuses
    the request (a missing or wrong token)."""
    headline = "Cannot submit the job"


class JobFailed(MlopsError):
    """A submitted job ended FAILED or STOPPED; the message holds its id, status message and last log lines."""
    headline = "Job failed"
    exit_code = ExitCode.JOB


def closest(name: str, options) -> str | None:
    """The option most like ``name`` (the same but for case first), or None."""
    options = [str(o) for o in options]
    same = [o for o in options if o.casefold() == str(name).casefold()]
    guess = same or difflib.get_close_matches(str(name), options, n=1)
    return guess[0] if guess else None


def did_you_mean(name: str, options) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options``, or nothing."""
    guess = closest(name, options)
    return f" (did you mean {guess!r}?)" if guess else ""
