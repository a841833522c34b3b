"""Federation across hosts over NATS JetStream (the ``cluster`` extra: nats-py).

Each node runs a :class:`Bridge` next to its bus: local events matching the
export patterns go to one JetStream stream, and the other nodes' events
matching the import patterns come back out of it onto the local bus, marked
with their origin. See bridge.py, exporter.py and importer.py for how it
keeps "exactly once, in order per origin".
"""

from saltbus.cluster.bridge import Bridge
from saltbus.cluster.settings import ClusterSettings
from saltbus.cluster.state import ORIGIN_KEY
from saltbus.cluster.subjects import TagPattern, subject_to_tag, tag_to_subject

__all__ = [
    "ORIGIN_KEY",
    "Bridge",
    "ClusterSettings",
    "TagPattern",
    "subject_to_tag",
    "tag_to_subject",
]
