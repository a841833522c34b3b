"""What travels with each event through NATS, besides its body.

The message body is the event's body as the bus carries and journals it
(``TAG + b"\\n\\n" + msgpack(DATA)``), so a consumer of the stream needs
nothing of saltbus to read it. The headers say where it comes from:

- ``Nats-Msg-Id: <node>:<epoch>:<seq>``: JetStream drops a message whose id
  it saw within the stream's duplicate window, so a resend never duplicates;
- ``Saltbus-Origin``, ``Saltbus-Origin-Epoch``, ``Saltbus-Origin-Seq``: the
  origin node, its numbering and the event's sequence number there;
- ``Saltbus-Tag``: the tag, percent-encoded (header values are one line of
  text), for readers that only look at headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote

from saltbus.errors import RemoteProtocolError

MSG_ID: Final = "Nats-Msg-Id"
ORIGIN: Final = "Saltbus-Origin"
ORIGIN_EPOCH: Final = "Saltbus-Origin-Epoch"
ORIGIN_SEQ: Final = "Saltbus-Origin-Seq"
TAG: Final = "Saltbus-Tag"


@dataclass(frozen=True, slots=True)
class Envelope:
    node: str
    epoch: int
    seq: int
    tag: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {
            MSG_ID: f"{self.node}:{self.epoch}:{self.seq}",
            ORIGIN: self.node,
            ORIGIN_EPOCH: str(self.epoch),
            ORIGIN_SEQ: str(self.seq),
        }
        if self.tag is not None:
            headers[TAG] = quote(self.tag, safe="/")
        return headers

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | None) -> Envelope:
        """Raises :class:`RemoteProtocolError` for a message saltbus did not publish."""
        if not headers or ORIGIN not in headers:
            raise RemoteProtocolError("message without a Saltbus-Origin header")
        try:
            epoch = int(headers.get(ORIGIN_EPOCH, "0"))
            seq = int(headers[ORIGIN_SEQ])
        except (KeyError, ValueError):
            raise RemoteProtocolError(
                f"message from {headers[ORIGIN]!r} without a valid origin sequence number"
            ) from None
        tag = headers.get(TAG)
        return cls(headers[ORIGIN], epoch, seq, None if tag is None else unquote(tag))
