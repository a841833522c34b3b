"""Salt's job metrics, counted from the events a master's bus carries.

The names and labels are salt-exporter's, which operators already alert on:

- ``salt/job/<jid>/new`` {fun, arg, minions, ...}: ``salt_new_job_total`` and
  ``salt_expected_responses_total`` (by the number of minions targeted);
- ``salt/job/<jid>/ret/<minion>`` {fun, fun_args, success, retcode, schedule?}:
  ``salt_responses_total``; ``salt_function_responses_total`` for a job sent
  by the master, ``salt_scheduled_job_return_total`` for one the minion's
  scheduler ran; ``salt_function_status`` (1 when the last return of a
  watched function succeeded, 0 when it failed).

``state`` is what a state function applied: the mods of ``state.sls`` and
``state.apply`` (``highstate`` without), ``highstate``, the state function of
``state.single``; empty for other functions. A return succeeded when its
``success`` is true and its ``retcode`` (when given) is 0: a state run with a
failed state, or ``cmd.run`` of a failing command, has ``retcode`` set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from saltbus.event import Event

JOB_TAG_PREFIX: Final = "salt/job/"
# Salt's CLI polls running jobs with saltutil.find_job: jobs of its own, not the user's.
IGNORED_FUNCTIONS: Final = frozenset({"saltutil.find_job"})
DEFAULT_STATUS_FUNCTIONS: Final = ("state.highstate",)
# Labels that grow with the fleet or the state tree, which an operator may drop.
DROPPABLE_LABELS: Final = ("minion", "state")


@dataclass(frozen=True, slots=True)
class JobMetricsOptions:
    """``drop_labels``: labels left out of every metric (``minion``, ``state``);
    ``status_functions``: the functions ``salt_function_status`` follows (empty:
    the metric is off)."""

    drop_labels: frozenset[str] = frozenset()
    status_functions: tuple[str, ...] = DEFAULT_STATUS_FUNCTIONS
    ignored_functions: frozenset[str] = field(default=IGNORED_FUNCTIONS)

    def __post_init__(self) -> None:
        unknown = self.drop_labels - set(DROPPABLE_LABELS)
        if unknown:
            raise ValueError(
                f"cannot drop labels {sorted(unknown)}; droppable: {', '.join(DROPPABLE_LABELS)}"
            )


class SaltJobMetrics:
    """Counts Salt's job events into ``registry``: feed it with :meth:`observe`."""

    def __init__(
        self, registry: CollectorRegistry, options: JobMetricsOptions | None = None
    ) -> None:
        self.options = options or JobMetricsOptions()
        self.events = 0
        self.ignored = 0

        def labels(*names: str) -> list[str]:
            return [n for n in names if n not in self.options.drop_labels]

        self._new = Counter(
            "salt_new_job",
            "Total number of new jobs",
            labels("function", "state"),
            registry=registry,
        )
        self._expected = Counter(
            "salt_expected_responses",
            "Responses expected: the minions each new job targeted",
            labels("function", "state"),
            registry=registry,
        )
        self._function_responses = Counter(
            "salt_function_responses",
            "Responses to jobs the master sent, by function, state and success",
            labels("function", "state", "success"),
            registry=registry,
        )
        self._scheduled = Counter(
            "salt_scheduled_job_return",
            "Returns of jobs the minions' schedulers ran",
            labels("function", "state", "minion", "success"),
            registry=registry,
        )
        self._responses = Counter(
            "salt_responses",
            "Responses, scheduled ones included, by minion and success",
            labels("minion", "success"),
            registry=registry,
        )
        self._status: Gauge | None = None
        if self.options.status_functions:
            self._status = Gauge(
                "salt_function_status",
                "1 when the last return of the function succeeded, 0 when it failed",
                labels("minion", "function", "state"),
                registry=registry,
            )

    def observe(self, event: Event) -> bool:
        """Count one event; False when it is not a job event counted here."""
        parts = event.tag.split("/")
        data = event.data if isinstance(event.data, Mapping) else {}
        fun = data.get("fun")
        if len(parts) < 4 or parts[:2] != ["salt", "job"] or not isinstance(fun, str):
            return False
        if fun in self.options.ignored_functions:
            self.ignored += 1
            return False
        if len(parts) == 4 and parts[3] == "new":
            self._new_job(fun, data)
        elif len(parts) >= 5 and parts[3] == "ret":
            self._returned(fun, data, "/".join(parts[4:]))
        else:
            return False
        self.events += 1
        return True

    def _new_job(self, fun: str, data: Mapping[str, Any]) -> None:
        state = state_of(fun, data.get("arg"))
        self._labelled(self._new, function=fun, state=state).inc()
        minions = data.get("minions")
        targeted = (
            len(minions) if isinstance(minions, Sequence) and not isinstance(minions, str) else 0
        )
        if targeted:
            self._labelled(self._expected, function=fun, state=state).inc(targeted)

    def _returned(self, fun: str, data: Mapping[str, Any], tag_minion: str) -> None:
        minion = str(data.get("id") or tag_minion)
        state = state_of(fun, data.get("fun_args"))
        success = "true" if succeeded(data) else "false"
        self._labelled(self._responses, minion=minion, success=success).inc()
        if data.get("schedule"):
            self._labelled(
                self._scheduled, function=fun, state=state, minion=minion, success=success
            ).inc()
        else:
            self._labelled(
                self._function_responses, function=fun, state=state, success=success
            ).inc()
        if self._status is not None and fun in self.options.status_functions:
            self._labelled(self._status, minion=minion, function=fun, state=state).set(
                1 if success == "true" else 0
            )

    def _labelled(self, metric: Any, **values: str) -> Any:
        dropped = self.options.drop_labels
        return metric.labels(**{k: v for k, v in values.items() if k not in dropped})


def succeeded(data: Mapping[str, Any]) -> bool:
    retcode = data.get("retcode", 0)
    return bool(data.get("success", retcode == 0)) and retcode in (0, None)


def state_of(fun: str, args: Any) -> str:
    """The ``state`` label of a job of ``fun`` called with ``args``."""
    if fun == "state.highstate":
        return "highstate"
    if fun in ("state.sls", "state.apply"):
        mods = _first_arg(args, "mods")
        return _mods_text(mods) or "highstate"
    if fun == "state.single":
        return _mods_text(_first_arg(args, "fun"))
    return ""


def _first_arg(args: Any, keyword: str) -> Any:
    """The first positional argument, or ``keyword`` passed by name (Salt
    passes keyword arguments as a dict among the positional ones)."""
    if not isinstance(args, Iterable) or isinstance(args, str | bytes | Mapping):
        return None
    for arg in args:
        if isinstance(arg, Mapping):
            if keyword in arg:
                return arg[keyword]
            continue
        if isinstance(arg, str) and "=" in arg:
            name, _, value = arg.partition("=")
            if name == keyword:
                return value
            continue
        return arg
    return None


def _mods_text(mods: Any) -> str:
    if isinstance(mods, str):
        return mods
    if isinstance(mods, Sequence) and not isinstance(mods, bytes):
        return ",".join(str(m) for m in mods)
    return ""
