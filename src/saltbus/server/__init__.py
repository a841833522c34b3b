"""The publisher daemon and its in-process form."""

from saltbus.server.app import Server
from saltbus.server.embedded import EmbeddedPublisher
from saltbus.server.fanout import SubscriberStats

__all__ = ["EmbeddedPublisher", "Server", "SubscriberStats"]
