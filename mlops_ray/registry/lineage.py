"""Lineage facts recorded with every registered model: which code and which libraries made it.

In: the working directory (its git repository, if any) and the installed distributions.
Out: ``lineage()`` -- ``{"git_commit", "python", "packages"}`` for a bundle's metadata.json --
and ``git_commit(start)``, the HEAD commit read from the ``.git`` files themselves (worktrees,
submodules and packed refs included), so no git binary is needed on a Ray worker or in a
container. Outside a repository, or in one without commits, the commit is None, never an error.
"""
from __future__ import annotations

import os
import platform
import re
from importlib import metadata

from mlops_ray._version import __version__

_LINEAGE_PACKAGES = {"ray": "ray", "xgboost": "xgboost", "optuna": "optuna", "mlflow": "mlflow",
                     "pandas": "pandas", "pyarrow": "pyarrow", "mlops_ray": "mlops-ray"}


def lineage() -> dict:
    """Git commit of the working directory (None outside a repo), Python and package versions."""
    packages = {}
    for key, dist in _LINEAGE_PACKAGES.items():
        try:
            packages[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            packages[key] = None
    if packages["mlops_ray"] is None:
        packages["mlops_ray"] = __version__
    return {"git_commit": git_commit(os.getcwd()), "python": platform.python_version(), "packages": packages}


def git_commit(start: str) -> str | None:
    """HEAD of the git repository containing ``start``, read from .git files (no git binary needed)."""
    try:
        d = os.path.abspath(start)
        while True:
            dot_git = os.path.join(d, ".git")
            if os.path.exists(dot_git):
                break
            parent = os.path.dirname(d)
            if parent == d:
                return None
            d = parent
        git_dir = dot_git
        if os.path.isfile(dot_git):                          # worktree or submodule: "gitdir: <path>"
            line = _read_text(dot_git)
            if not line.startswith("gitdir:"):
                return None
            git_dir = os.path.normpath(os.path.join(d, line[len("gitdir:"):].strip()))
        head = _read_text(os.path.join(git_dir, "HEAD"))
        if not head.startswith("ref:"):
            return head if re.fullmatch(r"[0-9a-f]{40,64}", head) else None
        ref = head[len("ref:"):].strip()
        common = git_dir
        if os.path.isfile(os.path.join(git_dir, "commondir")):
            common = os.path.normpath(os.path.join(git_dir, _read_text(os.path.join(git_dir, "commondir"))))
        for base in (git_dir, common):
            if os.path.isfile(os.path.join(base, ref)):
                return _read_text(os.path.join(base, ref)) or None
        packed = os.path.join(common, "packed-refs")
        if os.path.isfile(packed):
            for line in _read_text(packed).splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
        return None                                          # a fresh repo without commits
    except OSError:
        return None


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read().strip()
