"""The soak and chaos run (issue 20): ``python -m benchmarks.soak``.

Three ``saltbus serve`` nodes federated through a three-server NATS JetStream
cluster, with the reactor, returners, the HTTP bridge and resuming listeners
on them, under a steady firing load with bursts, while a fault schedule drawn
from the seed kills, stops and starves them one at a time (node c's processes
are spared the kills and stops: their RSS and FDs are judged over the whole
run); then a reconciler reads what every consumer wrote and checks it against
what was acknowledged.

One job per module: ``processes`` (starting, killing, restarting),
``topology`` (what runs where), ``load`` (the firing clients), ``consumers``
(the SSE clients), ``sink`` (the http returner's receiver), ``faults`` (the
schedule and the injections), ``monitor`` (RSS and FDs), ``reconcile`` (the
checks), ``report`` (the output), ``reaction`` (the reactor's recorded side
effect).
"""
