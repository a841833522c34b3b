"""Rules over several events (``reactor_rules:``): correlation and counting.

:mod:`.defs` reads the rules, :mod:`.correlate` and :mod:`.counting` are
their state machines (sans-I/O, fed events with their times and advanced
in time), :mod:`.ruleset` runs them all, :mod:`.store` keeps their state in
the journal, with the firings whose reactions have not finished
(:mod:`.pending`), :mod:`.runner` is the reactor's side, :mod:`.trial` runs them
on a simulated clock for ``saltbus react --test-events``.
"""
