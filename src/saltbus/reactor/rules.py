"""The reactor's configuration: Salt's ``reactor:`` list, loaded and checked.

``reactor:`` is a list of ``{'<tag glob>': [reaction files]}``; tags are
matched with fnmatch as Salt does, and file paths may be globs too (sorted
matches). Relative paths are taken from the directory of the config file.
Every file is read and compiled when the configuration is loaded, and
rendered once without an event to catch YAML and shape errors then, rather
than at the first matching event.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jinja2

from saltbus.config import Config
from saltbus.errors import ConfigError
from saltbus.event import MatchType, TagMatcher, tag_matcher
from saltbus.reactor.errors import ReactionFileError
from saltbus.reactor.multi.defs import RuleDef, parse_rules
from saltbus.reactor.spec import Reaction
from saltbus.reactor.templates import ReactionTemplate, compile_condition

log = logging.getLogger("saltbus.reactor")


@dataclass(frozen=True)
class Rule:
    pattern: str
    templates: tuple[ReactionTemplate, ...]
    matcher: TagMatcher


@dataclass(frozen=True)
class Rules:
    """Tag globs and the reaction files each one runs, in configuration order."""

    rules: tuple[Rule, ...]
    # The reactions the trial render found, for `saltbus react --check` and logs.
    found: tuple[Reaction, ...] = ()
    # reactor_rules: rules over several events (saltbus.reactor.multi).
    multi: tuple[RuleDef, ...] = ()

    def match(self, tag: str) -> list[ReactionTemplate]:
        """The reaction files for ``tag``; a file listed under several matching
        globs runs once."""
        matched: dict[Path, ReactionTemplate] = {}
        for rule in self.rules:
            if rule.matcher(tag):
                for template in rule.templates:
                    matched.setdefault(template.path, template)
        return list(matched.values())

    @property
    def files(self) -> int:
        return len({t.path for rule in self.rules for t in rule.templates})


def load_rules(config: Config, base_dir: Path | None = None) -> Rules:
    """Read and check every reaction file of ``config.reactor``.

    Raises :class:`ConfigError` (a :class:`ReactionFileError`, with file and
    line, for a problem in a reaction file). Reactions that need a Salt master
    (local, runner, wheel, caller) are found here too, and run through Salt.
    """
    base = base_dir if base_dir is not None else Path.cwd()
    compiled: dict[Path, ReactionTemplate] = {}
    rules: list[Rule] = []
    found: list[Reaction] = []
    for pattern, files in config.reactor:
        templates: list[ReactionTemplate] = []
        for path in _expand(files, base, pattern):
            template = compiled.get(path)
            if template is None:
                template = compiled[path] = ReactionTemplate(path)
                found.extend(_check(template, pattern))
            templates.append(template)
        rules.append(Rule(pattern, tuple(templates), tag_matcher(pattern, MatchType.FNMATCH)))
    return Rules(tuple(rules), tuple(found), parse_rules(config.reactor_rules))


def _expand(files: Iterable[str], base: Path, pattern: str) -> list[Path]:
    paths: list[Path] = []
    for name in files:
        if name.startswith("salt://"):
            raise ConfigError(
                f"reactor {pattern!r}: {name} is a path on a Salt master's fileserver; "
                "give the file's path on this host"
            )
        path = Path(os.path.expanduser(name))
        path = path if path.is_absolute() else base / path
        if glob.has_magic(str(path)):
            matches = sorted(Path(p) for p in glob.glob(str(path)))
            if not matches:
                log.warning("reactor %r: no reaction file matches %s", pattern, path)
            paths.extend(matches)
        elif not path.is_file():
            raise ReactionFileError(path, None, f"reactor {pattern!r}: no such reaction file")
        else:
            paths.append(path)
    return paths


def _check(template: ReactionTemplate, pattern: str) -> tuple[Reaction, ...]:
    reactions = template.trial(pattern)
    if reactions is None:
        log.debug("%s needs an event's data to render; checked at each event", template.path)
        return ()
    for reaction in reactions:
        if reaction.when is not None:
            try:
                compile_condition(reaction.when)
            except jinja2.TemplateSyntaxError as exc:
                raise ReactionFileError(
                    reaction.path,
                    reaction.line,
                    f"reaction {reaction.name!r}: when: {exc.message}",
                ) from None
    return reactions
