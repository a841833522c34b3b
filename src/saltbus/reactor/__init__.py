"""The reactor: Salt's ``reactor:`` configuration, run without a Salt master.

    rules = load_rules(config, base_dir=Path("/etc/saltbus"))
    reactor = Reactor(config, rules, loader=...)
    await reactor.run()          # until reactor.request_stop()

See ``saltbus react --help`` for the configuration, and the modules for the
parts: :mod:`.rules` (loading), :mod:`.templates` (Jinja2 then YAML),
:mod:`.spec` (reactions in Salt's shape), :mod:`.actions`, :mod:`.engine` (with
:mod:`.pool` running the reactions and :mod:`.outbox` firing what they say).
Needs Jinja2 (the ``reactor`` extra).
"""

from saltbus.reactor.engine import Reactor
from saltbus.reactor.errors import ActionError, ReactionFileError, SaltUnreachableError
from saltbus.reactor.reports import Stats
from saltbus.reactor.rules import Rules, load_rules
from saltbus.reactor.spec import Reaction

__all__ = [
    "ActionError",
    "Reaction",
    "ReactionFileError",
    "Reactor",
    "Rules",
    "SaltUnreachableError",
    "Stats",
    "load_rules",
]
