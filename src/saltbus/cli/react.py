"""``saltbus react``: run the reactor against a bus (saltbus's or a Salt master's)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saltbus.cli import react_oneshot, react_rules
from saltbus.cli.common import add_bus_options, add_journal_options, config_from_args
from saltbus.config import Config
from saltbus.errors import ConfigError

if TYPE_CHECKING:
    from saltbus.reactor import Reactor, Rules
    from saltbus.reactor.leader import Leadership
    from saltbus.server import Server

STATS_KEY = "reactor"  # its part of the server's statistics

HELP = "run reactions (commands, events, HTTP posts, Python) when events match"
DESCRIPTION = """\
Run Salt's reactor without a Salt master. The config file's `reactor:` list
(Salt's own form, so a master config works) maps tag globs to reaction files;
each file is rendered with Jinja2 (variables `tag` and `data`), then read as
YAML, for every matching event. Tags are matched with fnmatch, as Salt does.

example, /etc/saltbus/reactor.conf:
  reactor:
    - 'app/deploy/*':                     # a tag glob
      - /srv/reactor/deploy.sls           # reaction files (globs allowed;
      - /srv/reactor/notify/*.sls         #  relative to this file's directory)

/srv/reactor/deploy.sls:
  {% if data['env'] == 'prod' %}           # Jinja2 first
  write_marker:                           # a reaction: its name, one action
    cmd.run:
      - cmd: ["sh", "-c", "echo {{ data['version'] }} > /var/tmp/deployed"]
      - timeout: 10
  {% endif %}
  tell_others:
    event.send:
      - args:                             # Salt's newer argument form
        - tag: app/deploy/seen
        - data: {version: "{{ data['version'] }}"}
  page_oncall:
    http.post:
      - url: https://hooks.example.com/deploy
      - json: {text: "deployed {{ data['version'] }}"}
      - retries: 5
    when: data['version'].endswith('-hotfix')   # saltbus: a condition on the event
    once_within: 10m                      # saltbus: at most once per 10 minutes
    group_by: [service]                   #   ... per value of data['service']

actions (arguments as `- name: value` items, or `- args: [...]`):
  cmd.run     cmd (a list: no shell; a string is split like a shell would,
              without running one), shell (true: run cmd through /bin/sh),
              cwd, env (added to the reactor's environment), timeout (default
              300 s, 0: none). Result {retcode, stdout, stderr}.
  event.send  tag, data. The event records its cause (the loop guard).
  http.post   url, json (default: the event's {tag, data}), headers, timeout
              (10 s), retries (3), backoff (0.5 s, doubled each retry).
  python      function: "package.module:function", called as
              function(tag, data, **kwargs) in a worker thread; kwargs.
  local.FUN   Salt's: publish FUN to the minions of tgt through the Salt
              master, without waiting for them: tgt, tgt_type (glob), arg,
              kwarg (or `- args:`), ret, timeout, batch. Result {jid,
              minions}; follow salt/job/<jid>/ret/* for the returns (with
              batch, the reaction waits for each batch). Salt's `cmd` alias
              works too (cmd.run WITH a tgt, any other cmd.FUN).
  runner.FUN  Salt's runner FUN on the master; result {jid, return} (the
              reaction waits for the return, up to 300 s).
  wheel.FUN   Salt's wheel FUN (e.g. key.accept); result {jid, return}.
              Arguments as arg/kwarg, `- args:`, or `- name: value` items.
  caller.FUN  Salt's FUN run here with the minion's config and modules (as
              salt-call does); result {return}. cmd.run without tgt is
              saltbus's command action.

Salt's reactions reach the master through a helper run by Salt's own python
(saltbus need not be installed beside Salt): the salt_python setting, else
the interpreter of salt-master on PATH, else a python3 that imports salt.
The master's config: --config when it is the master's own file (it has
Salt's keys such as interface or ret_port), else salt_master_config, else
$SALT_MASTER_CONFIG, else /etc/salt/master; for caller reactions the
minion's: --config when it names a `master:`, else salt_minion_config,
$SALT_MINION_CONFIG, /etc/salt/minion. Run the reactor as the master's
user (it reads the master's key, as Salt's own tools do). For a master on
another host, a salt_api: {url, username, password, eauth, timeout, verify}
section sends local, runner and wheel reactions to salt-api's /run
(rest_cherrypy, rest_tornado) with those eauth credentials instead. A
reaction that cannot reach the master gives a ret event with success false
and the reason (and runs again as its retry: says).

beside the action (or among its arguments):
  when: EXPR          a Jinja2 expression over tag and data; false: not run
  once_within: DUR    run at most once per DUR (30, 500ms, 30s, 5m, 1h)
  group_by: [KEYS]    ... once per DUR for each value of these data keys
  retry: {attempts: N, delay: DUR, factor: F, max_delay: DUR}
                      run it again when it fails, N runs in all (retry: N
                      for short; delay 1s, factor 2, max_delay 60s); the
                      retry waits on a timer, not in a worker. Each run's
                      ret has attempt and attempts, a failed one retrying_in
                      or, the last, gave_up: true; a clean stop reports each
                      retry still waiting (gave_up, stopped: true); a
                      gated reaction (lock, concurrency) retries holding its gate
  lock: TEXT          reactions whose lock (a template) is the same text run one
                      at a time, in event order (queued, never dropped)
  concurrency: N      at most N runs of this reaction at once

rules over several events (`reactor_rules:`, examples in the README):
  NAME: {all|sequence|not: [steps], within: DUR, key: EXPR}   a step is a
        tag glob or {tag, when, key, name}; not: the first step, then none
        of the others within DUR (fires when DUR runs out)
  NAME: {tag: GLOB, when: EXPR, accumulate_within: DUR, threshold: N}
  NAME: {tag: GLOB, when: EXPR, once_after: DUR}     (a quiet period)
  key: EXPR (or group_by: [KEYS]) joins the events; max_groups: N (10000).
  A firing is handled as the event saltbus/rule/NAME (list it under a glob):
  data {rule, kind, key, count, at, events}; `events[0]`, `events.<step>` in
  reaction files. Windows run on the journal's times and are kept in it,
  and so is each firing until its reactions finish: a reactor killed while
  they run reacts to it again when restarted (at least once).

what it fires (watch with `saltbus listen --tag saltbus/reactor/`):
  saltbus/reactor/<name>/ret   {success, result | error, duration,
                                trigger_tag, trigger_seq, reaction, file;
                                attempt, retrying_in | gave_up with retry:}
  saltbus/reactor/loop         a chain of reactions reached reactor_max_depth
  saltbus/reactor/overflow     reactions dropped: the queue was full
  saltbus/reactor/error        a reaction file failed to render for an event
  saltbus/reactor/reload       the outcome of a reload
  saltbus/job/<jid>/missing    with reactor_missing_returns: the minions of a
                               Salt job that did not return in time {jid, fun,
                               tgt, tgt_type, user, missing, minions, returned}
  saltbus/reactor/watchdog     a probe of its own subscription after
                               reactor_watchdog seconds without an event

settings (config file keys; flags win): reactor_worker_threads (10),
reactor_worker_hwm (10000; the queue), reactor_max_depth (5),
reactor_catch_up (true), reactor_name ("reactor"), salt_python,
salt_master_config, salt_minion_config, salt_api, reactor_scope (local:
with federation, react only to events fired on this node; all: imported
events too; leader: one node, elected through a NATS key-value lease of
reactor_leader_ttl seconds (5), reacts to every event of the cluster, and a
node taking over runs what the dead leader had not marked done: at least
once across a leader crash), reactor_missing_returns (false),
reactor_missing_returns_timeout (60 s after the job's new event),
reactor_missing_returns_max_jobs (10000 open jobs; kept in the journal),
reactor_watchdog (120 s without an event: probe the subscription, and
re-establish it, logged, when the probe does not come back; 0: off).

With a saltbus journal the reactor keeps its position (under its name) and,
started again, first handles the events it missed (--no-catch-up: only new
ones), saying how far back that reaches: "catching up N events from seq A
to B (oldest HH:MM:SS, X min ago)". A reaction skipped by `when:` or
`once_within:` is logged at debug (saltbus --log-level debug react ...) and
counted per reaction in the statistics logged when the reactor stops.

`saltbus react --test TAG [DATA]` (or --test-seq N: the event with seq N
in the journal) renders every reaction file whose glob
matches TAG for that event and prints what would run (Salt's reactions as
client, function and target), running nothing; for each reaction that would
not run it says why (its glob, when:, reactor_scope for an imported event,
the loop guard); once_within depends on the running reactor and is named.

`saltbus react --refire SEQ` (or `saltbus history --refire SEQ`, the same)
fires the journal's event SEQ again, as an event of this node marked
`_saltbus_refired: {seq, stamp, origin}`, so the reactions it missed run
(every matching reaction runs again).

SIGHUP or `saltbus react --reload` re-reads the configuration without losing
queued reactions; a configuration with errors is reported (file and line)
and the running one stays. `saltbus serve --config FILE` runs the
reactor in-process when FILE has a `reactor:` section. SIGTERM or Ctrl-C
lets queued reactions finish (up to 30 s) and exits 0.

examples:
  saltbus react --config /etc/saltbus/reactor.conf --sock-dir /tmp/bus
  saltbus react --config reactor.conf --check     # load, check, list, reach Salt; exit
  saltbus react --config reactor.conf --reload    # signal the running reactor
  saltbus react --config reactor.conf --test salt/minion/web1/start id=web1
                    # what would run for that event, and why the rest would not
  saltbus react --config reactor.conf --test-events events.yaml
                    # the rules over [{at: 0, tag: ..., data: {...}}, ...]
  sudo saltbus react --config /etc/salt/master --salt-version 3007
"""


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "react",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_argument_group("reactor")
    group.add_argument(
        "--name", help="the reactor's name: its position and pid file (default 'reactor')"
    )
    group.add_argument(
        "--catch-up",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="after a restart, first handle the events missed meanwhile (default: yes)",
    )
    group.add_argument("--workers", type=int, metavar="N", help="reactor_worker_threads")
    group.add_argument("--hwm", type=int, metavar="N", help="reactor_worker_hwm (queue size)")
    group.add_argument("--max-depth", type=int, metavar="N", help="reactor_max_depth")
    action = group.add_mutually_exclusive_group()
    action.add_argument(
        "--check", action="store_true", help="load and check the configuration, list it, exit"
    )
    action.add_argument(
        "--test",
        metavar="TAG",
        help="show what the reactor would do for an event TAG with DATA (not run), exit",
    )
    action.add_argument(
        "--test-seq",
        type=int,
        metavar="N",
        help="like --test, for the event with seq N in the bus's journal",
    )
    action.add_argument("--test-events", type=Path, metavar="FILE", help=react_rules.HELP)
    action.add_argument(
        "--refire",
        type=int,
        metavar="SEQ",
        help="fire the journal's event SEQ again (marked _saltbus_refired), so missed "
        "reactions run, exit",
    )
    action.add_argument(
        "--reload",
        action="store_true",
        help="tell the running reactor of this name and bus to reload (SIGHUP), exit",
    )
    parser.add_argument(
        "data",
        nargs="*",
        metavar="DATA",
        help="with --test: the event's data, as `saltbus fire` takes it (JSON, key=value, @FILE)",
    )
    add_bus_options(parser)
    add_journal_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.data and args.test is None:
        raise ConfigError(f"unexpected DATA {' '.join(args.data)!r}: DATA goes with --test TAG")
    config = _config(args)
    reactor = _reactor_package()
    if args.refire is not None:
        print(react_oneshot.refire(config, args.refire))
        return 0
    if args.reload:
        pid = reactor.progress.signal_reactor(reactor.progress.pid_path(config))
        print(f"saltbus: asked reactor {config.reactor_name!r} (pid {pid}) to reload")
        return 0
    if not config.reactor:
        where = args.config or "the configuration"
        raise ConfigError(f"{where} has no reactor: section (see saltbus react --help)")
    rules = reactor.load_rules(config, _base_dir(args))
    if args.test_events is not None:
        return react_rules.run_test_events(rules, args.test_events)
    if args.test is not None or args.test_seq is not None:
        react_oneshot.print_trial(config, rules, args)
        return 0
    if args.check:
        react_oneshot.print_check(config, rules)
        return 0
    import asyncio  # noqa: PLC0415

    asyncio.run(_react(config, rules, args))
    return 0


async def _react(config: Config, rules: Rules, args: argparse.Namespace) -> None:
    import asyncio  # noqa: PLC0415

    from saltbus.cli.notify import Notifier, watchdog_task  # noqa: PLC0415
    from saltbus.reactor import Reactor  # noqa: PLC0415

    reactor = Reactor(config, rules, loader=lambda: _reload(args), leadership=_leadership(config))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, reactor.request_stop)
    loop.add_signal_handler(signal.SIGHUP, reactor.request_reload)
    with Notifier.from_env() as notifier:
        notifier.status("starting")
        await reactor.start()
        try:
            running = (
                f"reactor {config.reactor_name!r} running on the {config.node} bus in "
                f"{config.sock_dir}: {len(rules.rules)} tag globs, {rules.files} reaction files"
            )
            print(f"saltbus: {running}; SIGHUP reloads, Ctrl-C stops", file=sys.stderr, flush=True)
            notifier.ready(running)
            async with watchdog_task(notifier):
                await reactor.wait_for_stop()
        finally:
            notifier.stopping()
            await reactor.stop()
    reactor.raise_if_failed()


async def start_alongside(
    config: Config, args: argparse.Namespace, server: Server | None = None
) -> Reactor:
    """Start the reactor of ``config`` in the running loop (``saltbus serve``);
    with ``server``, its statistics are part of the server's (`saltbus stats`)."""
    _reactor_package()
    import asyncio  # noqa: PLC0415

    from saltbus.reactor import Reactor, load_rules  # noqa: PLC0415

    found = {k: v for k, v in _salt_configs(args).items() if getattr(config, k) is None}
    if found:
        config = config.replace(**found)
    rules = load_rules(config, _base_dir(args))
    reactor = Reactor(config, rules, loader=lambda: _reload(args), leadership=_leadership(config))
    await reactor.start()
    if server is not None:
        server.stats_sources[STATS_KEY] = reactor.stats_dict
        # One SIGHUP handler per process: the server's, which reopens the
        # returners' files and then calls this.
        server.sighup_handlers.append(reactor.request_reload)
    else:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reactor.request_reload)
    print(
        f"saltbus: reactor {config.reactor_name!r} running: {len(rules.rules)} tag globs, "
        f"{rules.files} reaction files; SIGHUP reloads",
        file=sys.stderr,
        flush=True,
    )
    return reactor


def describe(stats: dict[str, Any]) -> list[str]:
    """The reactor's part of `saltbus stats`: what it did, and what it skipped
    for which reaction (a reaction that never runs says why here)."""
    lines = [
        f"reactor: {stats['events']} events, {stats['matched']} matched, "
        f"{stats['succeeded']} succeeded, {stats['failed']} failed, "
        f"{stats['dropped']} dropped (queue full), {stats['stopped']} stopped (loop guard)"
    ]
    if stats.get("retried") or stats.get("retries_waiting"):
        lines.append(
            f"  retry: {stats['retried']} failed runs run again, {stats['gave_up']} gave up, "
            f"{stats.get('retries_waiting', 0)} waiting"
        )
    if stats.get("other_nodes"):
        lines.append(
            f"  not reacted to here (reactor_scope): {stats['other_nodes']} events of other nodes"
        )
    for why, key in (("when: false", "skipped_by_when"), ("once_within", "skipped_by_throttle")):
        counts = stats.get(key) or {}
        if counts:
            skipped = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
            lines.append(f"  skipped ({why}): {skipped}")
    return lines + react_rules.describe_stats(stats)


def _config(args: argparse.Namespace) -> Config:
    return config_from_args(
        args,
        **_salt_configs(args),
        journal=getattr(args, "journal", None),
        reactor_name=getattr(args, "name", None),
        reactor_catch_up=getattr(args, "catch_up", None),
        reactor_worker_threads=getattr(args, "workers", None),
        reactor_worker_hwm=getattr(args, "hwm", None),
        reactor_max_depth=getattr(args, "max_depth", None),
    )


def _leadership(config: Config) -> Leadership | None:
    """With reactor_scope leader: the lease, through the cluster's NATS servers."""
    if config.reactor_scope != "leader":
        return None
    if not config.cluster:
        raise ConfigError(
            "reactor_scope leader needs a cluster: section (the NATS servers the "
            "leader is elected through)"
        )
    from saltbus.cluster.settings import ClusterSettings  # noqa: PLC0415
    from saltbus.reactor.leader import Leadership  # noqa: PLC0415

    settings = ClusterSettings.from_config(config)
    kwargs = settings.connect_kwargs()
    kwargs["name"] = f"{kwargs.get('name', 'saltbus')}-reactor"
    return Leadership(
        list(settings.servers),
        kwargs,
        settings.node_name,
        config.reactor_name,
        config.reactor_leader_ttl,
        config.reactor_worker_hwm,
    )


def _salt_configs(args: argparse.Namespace) -> dict[str, str]:
    """The --config file, when it is a Salt master's or minion's own (saltbus
    reads its keys, Salt's reactions reach the Salt it configures)."""
    if not args.config:
        return {}
    import yaml  # noqa: PLC0415

    from saltbus.config.saltfiles import salt_config_role  # noqa: PLC0415

    try:
        loaded = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}  # Config.load says what is wrong with it
    if not isinstance(loaded, dict):
        return {}
    role = salt_config_role(frozenset(map(str, loaded)))
    if role is None or loaded.get(f"salt_{role}_config") is not None:
        return {}
    return {f"salt_{role}_config": str(Path(args.config).resolve())}


def _reload(args: argparse.Namespace) -> tuple[Config, Rules]:
    config = _config(args)
    return config, _reactor_package().load_rules(config, _base_dir(args))


def _base_dir(args: argparse.Namespace) -> Path:
    """Relative reaction file paths are taken from the config file's directory."""
    return Path(args.config).resolve().parent if args.config else Path.cwd()


def _reactor_package() -> Any:
    try:
        import saltbus.reactor.progress  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(
            f"the reactor needs Jinja2 ({exc}); install it: pip install 'saltbus[reactor]'"
        ) from None
    return saltbus.reactor
