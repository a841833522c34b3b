"""Reaction files as Salt reads them: a Jinja2 template rendered with ``tag``
and ``data``, then YAML. Also the ``when:`` conditions, Jinja2 expressions.

Both run in Jinja2's sandbox: a template or condition cannot reach Python
internals through the event's data. Salt's ``json`` and ``yaml`` filters are
there; Salt's execution-module functions (``salt[...]``) are not.
"""

from __future__ import annotations

import functools
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment

from saltbus.reactor.errors import ReactionFileError
from saltbus.reactor.spec import Reaction, parse_reactions

# Rendered texts are cached: a file without Jinja, or events with the same
# data, are read as YAML once.
RENDER_CACHE: Final = 256
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _json_filter(value: Any, sort_keys: bool = True) -> str:
    return json.dumps(value, sort_keys=sort_keys, default=str)


def _yaml_filter(value: Any, flow_style: bool = True) -> str:
    return str(yaml.safe_dump(value, default_flow_style=flow_style)).strip()


def _environment(undefined: type[jinja2.Undefined]) -> SandboxedEnvironment:
    env = SandboxedEnvironment(undefined=undefined, autoescape=False, keep_trailing_newline=True)
    env.filters["json"] = _json_filter
    env.filters["yaml"] = _yaml_filter
    return env


class _Anything(jinja2.ChainableUndefined):
    """Stands in for ``data`` in a trial render without an event: every
    lookup, call and test gives another empty, false value."""

    def __call__(self, *args: Any, **kwargs: Any) -> _Anything:  # type: ignore[override]
        return self


_ENV: Final = _environment(jinja2.Undefined)
_TRIAL_ENV: Final = _environment(_Anything)


class ReactionTemplate:
    """One reaction file, compiled; :meth:`render` gives its reactions for an event."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.source = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ReactionFileError(path, None, f"cannot read: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ReactionFileError(path, None, f"not UTF-8: {exc}") from None
        self._template = self._compile(_ENV)
        self._cache: OrderedDict[str, tuple[Reaction, ...]] = OrderedDict()
        # A file without Jinja2 renders to itself: no need to render it per event.
        self.static = not any(mark in self.source for mark in ("{{", "{%", "{#"))

    def _compile(self, env: SandboxedEnvironment) -> jinja2.Template:
        try:
            return env.from_string(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise ReactionFileError(self.path, exc.lineno, f"Jinja2: {exc.message}") from None

    def render(self, tag: str, data: Mapping[str, Any]) -> tuple[Reaction, ...]:
        """The reactions this file defines for one event.

        Raises :class:`ReactionFileError` (naming the file and line) when the
        template fails, the result is not YAML, or a reaction is malformed.
        """
        text = self.source if self.static else self._render(self._template, tag, data)
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        reactions = self._parse(text, strict=True)
        self._cache[text] = reactions
        if len(self._cache) > RENDER_CACHE:
            self._cache.popitem(last=False)
        return reactions

    def trial(self, tag: str) -> tuple[Reaction, ...] | None:
        """Render without an event, to find errors before one arrives.

        Returns the reactions found, or None when the template needs real data
        to render at all (then nothing can be said before an event). YAML and
        shape errors raise: a file that does not parse with empty data seldom
        parses with real data."""
        try:
            text = self._compile(_TRIAL_ENV).render(tag=tag, data=_Anything(name="data"))
        except ReactionFileError:
            raise
        except Exception:
            return None
        return self._parse(text, strict=False)

    def _render(self, template: jinja2.Template, tag: str, data: Mapping[str, Any]) -> str:
        try:
            return template.render(tag=tag, data=data, events=_events(data))
        except jinja2.TemplateError as exc:
            raise ReactionFileError(self.path, _template_line(exc), f"Jinja2: {exc}") from None
        except Exception as exc:
            line = _template_line(exc)
            raise ReactionFileError(
                self.path, line, f"Jinja2: {type(exc).__name__}: {exc}"
            ) from None

    def _parse(self, text: str, *, strict: bool) -> tuple[Reaction, ...]:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            doc = loader.construct_document(node) if node is not None else None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = f"YAML (after Jinja2): {exc.problem or exc}"
            if mark is None:
                raise ReactionFileError(self.path, None, problem) from None
            line = self._source_line(text, mark.line + 1)
            if line is None:
                rendered = text.splitlines()[mark.line : mark.line + 1]
                problem += f" (line {mark.line + 1} as rendered: {''.join(rendered)!r})"
            raise ReactionFileError(self.path, line, problem) from None
        except yaml.YAMLError as exc:
            raise ReactionFileError(self.path, None, f"YAML (after Jinja2): {exc}") from None
        finally:
            loader.dispose()
        lines: dict[str, int] = {}
        if isinstance(node, yaml.MappingNode):
            for key, _value in node.value:
                name = str(key.value)
                rendered = key.start_mark.line + 1
                lines[name] = self._name_line(name) or self._source_line(text, rendered) or rendered
        return parse_reactions(doc, self.path, lines, strict=strict)

    # Jinja2 drops the lines of a false {% if %} block, so a line of the
    # rendered text is found again in the source: the same line when no line
    # was dropped, else the one source line with the same text.

    def _source_line(self, text: str, rendered: int) -> int | None:
        source = self.source.splitlines()
        lines = text.splitlines()
        if len(lines) == len(source):
            return rendered
        wanted = lines[rendered - 1].strip() if 0 < rendered <= len(lines) else ""
        found = [n for n, line in enumerate(source, 1) if wanted and line.strip() == wanted]
        return found[0] if len(found) == 1 else None

    def _name_line(self, name: str) -> int | None:
        pattern = re.compile(
            rf"^(?:{re.escape(name)}|'{re.escape(name)}'|\"{re.escape(name)}\")\s*:"
        )
        found = [n for n, line in enumerate(self.source.splitlines(), 1) if pattern.match(line)]
        return found[0] if len(found) == 1 else None


class MatchedEvents(list[dict[str, Any]]):
    """The events a multi-event rule matched (saltbus.reactor.multi), in the
    order they came: ``events[0]``, and ``events.<step name>`` for the first
    one a named step matched."""

    def __getattr__(self, name: str) -> dict[str, Any]:
        for event in self:
            if event.get("name") == name:
                return event
        raise AttributeError(name)


def _events(data: Mapping[str, Any]) -> MatchedEvents:
    """A reaction file's ``events``: a rule's matched events, else none."""
    events = data.get("events") if isinstance(data, Mapping) else None
    return events if isinstance(events, MatchedEvents) else MatchedEvents()


def _template_line(exc: BaseException) -> int | None:
    """The template line an error happened on, from Jinja2's traceback rewrite."""
    lineno = getattr(exc, "lineno", None)
    if isinstance(lineno, int):
        return lineno
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


Condition = Callable[[str, Mapping[str, Any]], bool]
Expression = Callable[[str, Mapping[str, Any]], Any]


@functools.lru_cache(maxsize=1024)
def compile_condition(expression: str) -> Condition:
    """A ``when:`` expression as a predicate over ``tag`` and ``data``.

    Raises :class:`jinja2.TemplateSyntaxError`; the predicate raises what the
    expression raises (a comparison with a missing key, for instance)."""
    compiled = _ENV.compile_expression(expression, undefined_to_none=False)

    def condition(tag: str, data: Mapping[str, Any]) -> bool:
        return bool(compiled(tag=tag, data=data))

    return condition


@functools.lru_cache(maxsize=1024)
def compile_expression(expression: str) -> Expression:
    """A Jinja2 expression over ``tag`` and ``data`` giving a value (a rule's
    ``key:``); an undefined result (a missing key) is None.

    Raises :class:`jinja2.TemplateSyntaxError`."""
    compiled = _ENV.compile_expression(expression, undefined_to_none=True)

    def value(tag: str, data: Mapping[str, Any]) -> Any:
        return compiled(tag=tag, data=data)

    return value
