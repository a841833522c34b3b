"""Prometheus metrics and health checks (the ``metrics`` extra: prometheus_client).

- :mod:`saltbus.metrics.bus`: the bus's metrics, read from a publisher's
  statistics when scraped;
- :mod:`saltbus.metrics.health`: readiness judged from the same statistics
  (``/readyz``, ``saltbus health``);
- :mod:`saltbus.metrics.salt_jobs`: Salt's job metrics from ``salt/job/``
  events, with salt-exporter's names (``saltbus exporter``);
- :mod:`saltbus.metrics.endpoint`: ``/metrics``, ``/healthz`` and ``/readyz``
  on their own port, in the event loop.

Nothing is imported here: ``saltbus health`` needs only :mod:`.health`, which
works without prometheus_client.
"""
