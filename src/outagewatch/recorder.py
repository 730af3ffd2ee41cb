"""Takes finished samples and overdue runs: metrics and logs now, the evaluator next."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from outagewatch.config import Target
    from outagewatch.metrics import Metrics
    from outagewatch.model import Rule, Sample
    from outagewatch.scheduler import Recorder

log = structlog.get_logger("outagewatch.recorder")


class SampleRecorder:
    def __init__(self, metrics: Metrics, *, listeners: Sequence[Recorder] = ()) -> None:
        self._metrics = metrics
        self._listeners = tuple(listeners)
        self.last: dict[str, Sample] = {}

    def started(self, target: Target, rule: Rule, started_at: datetime) -> None:
        for listener in self._listeners:
            listener.started(target, rule, started_at)

    def record(self, target: Target, rule: Rule, sample: Sample) -> None:
        self._metrics.observe(sample)
        self.last[target.name] = sample
        fields = {
            "target": target.name,
            "type": target.type,
            "platform": target.platform,
            "result": sample.result.value,
            "duration_s": round(sample.duration, 4),
        }
        if not sample.ok:
            log.warning("probe_failed", phase=sample.phase, detail=sample.detail, **fields)
        elif sample.duration > rule.threshold:
            log.warning("probe_slow", threshold_s=rule.threshold, **fields)
        else:
            log.debug("probe_finished", **fields)
        for listener in self._listeners:
            listener.record(target, rule, sample)

    def overdue(self, target: Target, rule: Rule, started_at: datetime) -> None:
        self._metrics.mark_overdue(target.name)
        log.warning("probe_overdue", target=target.name, platform=target.platform,
                    threshold_s=rule.threshold, started_at=started_at)
        for listener in self._listeners:
            listener.overdue(target, rule, started_at)

    def abandoned(self, target: Target, rule: Rule, started_at: datetime) -> None:
        for listener in self._listeners:
            listener.abandoned(target, rule, started_at)

    def forget(self, name: str) -> None:
        self.last.pop(name, None)


_: type[Recorder] = SampleRecorder
