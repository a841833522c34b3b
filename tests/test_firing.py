"""The firing session in memory, paired with a peer that plays the publisher:
it reads the session's frames and answers with saltbus's control messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from saltbus.client.firing import FiringSession, UtcStamper
from saltbus.config import Config
from saltbus.control import (
    Ack,
    Auth,
    Nack,
    Refused,
    Subscribed,
    Welcome,
    ack_request_id,
    decode_control,
    encode_control,
)
from saltbus.errors import (
    AccessDeniedError,
    FrameTooLargeError,
    JournalUnavailableError,
    LocalProtocolError,
    NoPublisherError,
    RemoteProtocolError,
)
from saltbus.wire import Frame, FrameDecoder, Framing, encode_frame, unpack_body


class Publisher:
    """The publisher's side of one pull connection, in memory."""

    def __init__(self, framing: Framing = Framing.BARE) -> None:
        self.framing = framing
        self.decoder = FrameDecoder(framing=framing)

    def read(self, data: bytes) -> list[Frame]:
        self.decoder.receive_data(data)
        return list(self.decoder)

    def say(self, *messages: Welcome | Refused | Ack | Nack | Subscribed) -> bytes:
        return b"".join(encode_control(m, self.framing) for m in messages)


def test_without_a_secret_nothing_is_sent_first_and_no_welcome_is_awaited() -> None:
    session = FiringSession()
    assert session.connect(None) == b""
    assert session.welcomed() and not session.awaiting_welcome


def test_the_secret_goes_first_and_the_welcome_admits() -> None:
    session, publisher = FiringSession(), Publisher()
    [auth] = publisher.read(session.connect("s3cret"))
    assert decode_control(auth) == Auth("s3cret")
    assert not session.welcomed()
    welcome = publisher.say(Welcome())
    session.receive_data(welcome[:2])  # replies arrive in any chunking
    assert not session.welcomed()
    session.receive_data(welcome[2:])
    assert session.welcomed() and session.heard_saltbus


def test_a_refusal_raises_with_the_publishers_reason() -> None:
    session, publisher = FiringSession(), Publisher()
    session.connect("wrong")
    session.receive_data(publisher.say(Refused("a wrong secret for this bus")))
    with pytest.raises(AccessDeniedError, match="refused this client: a wrong secret"):
        session.welcomed()


def test_a_close_during_authentication_is_access_denied() -> None:
    session = FiringSession()
    session.connect("s3cret")
    session.receive_data(b"")
    with pytest.raises(AccessDeniedError, match="closed the connection during authentication"):
        session.welcomed()


def test_an_event_frame_carries_the_stamped_data_and_leaves_the_callers_alone() -> None:
    session, publisher = FiringSession(), Publisher()
    data = {"id": "web1"}
    frame, request_id, event = session.event("salt/auth", data)
    [received] = publisher.read(frame)
    tag, sent = unpack_body(received.body)
    assert request_id is None and not received.head
    assert (tag, sent) == ("salt/auth", event.data) and event.seq is None
    assert set(sent) == {"id", "_stamp"} and data == {"id": "web1"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?", sent["_stamp"])


def test_acknowledgement_requests_are_numbered_and_answered_by_id() -> None:
    session, publisher = FiringSession(), Publisher()
    session.connect(None)
    frames = [session.event("a/b", {"n": n}, ack=True) for n in range(3)]
    assert [request_id for _, request_id, _ in frames] == [1, 2, 3]
    assert [ack_request_id(publisher.read(frame)[0]) for frame, _, _ in frames] == [1, 2, 3]
    # An earlier request's answer is passed over; the one asked for is taken.
    reply = publisher.say(Ack(1, 10), Ack(3, 12))
    session.receive_data(reply[:-1])
    assert session.acked(3) is None
    session.receive_data(reply[-1:])
    assert session.acked(3) == 12 and session.heard_saltbus


def test_a_nack_raises_journal_unavailable_at_once_with_the_reason() -> None:
    session, publisher = FiringSession(), Publisher()
    session.connect(None)
    _, request_id, _ = session.event("a/b", {}, ack=True)
    assert request_id is not None
    session.receive_data(publisher.say(Nack(request_id, "disk full")))
    with pytest.raises(JournalUnavailableError, match=r"journal cannot commit \(disk full\)"):
        session.acked(request_id)


def test_a_nack_for_another_request_is_not_this_ones() -> None:
    session, publisher = FiringSession(), Publisher()
    session.connect(None)
    session.receive_data(publisher.say(Nack(1, "disk full"), Ack(2, 7)))
    assert session.acked(2) == 7


def test_a_refusal_while_waiting_for_an_ack_is_access_denied() -> None:
    session, publisher = FiringSession(), Publisher()
    session.connect(None)
    session.receive_data(publisher.say(Refused("root is not allowed")))
    with pytest.raises(AccessDeniedError, match="root is not allowed"):
        session.acked(1)


def test_a_close_before_the_ack_is_no_publisher() -> None:
    session = FiringSession()
    session.connect(None)
    session.receive_data(b"")
    with pytest.raises(NoPublisherError, match="closed the connection before acknowledging"):
        session.acked(1)


def test_what_a_publisher_never_says_on_a_pull_connection_is_skipped() -> None:
    session, publisher = FiringSession(), Publisher()
    session.connect(None)
    session.receive_data(publisher.say(Subscribed(4)) + encode_frame(b"t\n\n\x80"))
    session.receive_data(publisher.say(Ack(1, 5)))
    assert session.acked(1) == 5


def test_bytes_that_are_not_frames_are_a_remote_protocol_error() -> None:
    session = FiringSession()
    session.connect(None)
    with pytest.raises(RemoteProtocolError):
        session.receive_data(b"\xc1\xc1\xc1\xc1")
        session.next_reply()


def test_a_new_connection_forgets_what_the_last_left_half_read() -> None:
    session, publisher = FiringSession(), Publisher()
    session.connect(None)
    session.receive_data(publisher.say(Ack(1, 5))[:3])
    session.connect(None)
    session.receive_data(publisher.say(Ack(2, 6)))
    assert session.acked(2) == 6


@pytest.mark.parametrize(
    ("tag", "data", "message"),
    [
        ("a/b", [("k", 1)], "must be a mapping, not list"),
        ("a/b", None, "must be a mapping, not NoneType"),
        (7, {}, "non-empty str tag"),
        ("", {}, "non-empty str tag"),
        ("a\n\nb", {}, "blank line"),
        ("a/b", {"k": object()}, "cannot be encoded"),
    ],
)
def test_bad_input_is_one_local_protocol_error(tag: object, data: object, message: str) -> None:
    session = FiringSession()
    with pytest.raises(LocalProtocolError, match=message) as caught:
        session.event(tag, data, ack=True)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)  # what Salt's callers catch
    # Nothing was numbered for the refused event.
    assert session.event("a/b", {}, ack=True)[1] == 1


def test_data_over_max_event_size_is_refused_not_trimmed() -> None:
    session = FiringSession(max_event_size=100)
    with pytest.raises(FrameTooLargeError, match="over max_event_size") as caught:
        session.event("big", {"blob": "x" * 200})
    assert caught.value.limit == 100
    # The bound is on the data: a long tag with small data passes.
    frame, _, _ = session.event("t" * 200, {})
    assert len(frame) > 200


def test_the_timeout_blames_salt_only_when_the_publisher_is_not_saltbus() -> None:
    salt = FiringSession().ack_timeout(0.5, served_by_saltbus=False)
    assert "a Salt publisher never acknowledges" in str(salt) and "0.5 s" in str(salt)
    ours = str(FiringSession().ack_timeout(0.5, served_by_saltbus=True))
    assert "Salt publisher" not in ours and "saltbus's publisher" in ours
    heard = FiringSession()
    heard.connect(None)
    heard.receive_data(Publisher().say(Ack(9, 1)))
    heard.acked(9)
    assert "Salt publisher" not in str(heard.ack_timeout(0.5, served_by_saltbus=False))


@pytest.mark.parametrize("version", ["3006", "3007", "3008"])
def test_the_session_fires_in_the_configured_generation(version: str, tmp_path: Path) -> None:
    config = Config.load(env={}, overrides={"sock_dir": tmp_path, "salt_version": version})
    session = FiringSession.for_config(config)
    framing = config.generation.pull_framing
    frame, _, event = session.event("g/x", {})
    [received] = Publisher(framing).read(frame)
    assert unpack_body(received.body)[0] == "g/x"
    assert event.data["_stamp"].endswith("+00:00") == (version == "3008")
    [auth] = Publisher(framing).read(session.connect("s"))
    assert decode_control(auth) == Auth("s")


def test_the_stamper_formats_like_isoformat() -> None:
    plain, offset = UtcStamper(), UtcStamper(with_offset=True)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?", plain())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00", offset())
