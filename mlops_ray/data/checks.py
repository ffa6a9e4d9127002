"""What validation reports: one ``CheckResult`` per check, gathered in a ``ValidationReport``.

In: the checks of ``validate.py`` (schema, rows, freshness) and of ``dates.py`` (date formats and
values they do not read). Out: a report the pipeline stores with the run, the CLI prints
(``summary``) or emits as JSON (``to_dict``), and batch scoring shows for a bad input. Apart from
both producers so that neither imports the other.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class CheckResult:
    column: str | None
    rule: str
    passed: bool
    observed: Any = None
    threshold: Any = None
    message: str = ""
    samples: list[dict] = field(default_factory=list)


@dataclass
class ValidationReport:
    rows: int
    checks: list[CheckResult]
    source: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "rows": self.rows, "n_checks": len(self.checks),
                "n_failed": len(self.failures), "source": self.source,
                "checks": [asdict(c) for c in self.checks]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def summary(self) -> str:
        if self.passed:
            return f"{len(self.checks)} checks passed on {self.rows:,} rows"
        lines = [f"{len(self.failures)} of {len(self.checks)} checks failed on {self.rows:,} rows:"]
        lines += [f"  - {c.message}" for c in self.failures]
        return "\n".join(lines)
