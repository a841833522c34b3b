"""The subscriber session (saltbus.client.session), in memory: the frames a
publisher would send, made by the codec, fed to it; the frames it makes,
decoded as a publisher would. No sockets: the listeners move these bytes."""

from __future__ import annotations

from typing import Any

import pytest

from saltbus.client.session import SubscriberSession
from saltbus.control import (
    Ack,
    Lagged,
    Nack,
    Refused,
    Stats,
    Subscribe,
    Subscribed,
    Welcome,
    decode_control,
    encode_control,
)
from saltbus.errors import AccessDeniedError, LaggedError, RemoteProtocolError
from saltbus.event import Event, MatchType
from saltbus.wire import Frame, FrameDecoder, Framing, encode_frame, pack_body

APP = (("app/", MatchType.STARTSWITH),)
STAMP_3008 = "2026-12-03T22:40:59.123456+00:00"  # Salt 3008's clients stamp with an offset


def decoded(data: bytes, framing: Framing = Framing.BARE) -> Frame:
    """The one frame in ``data``, as a listener's decoder reads it."""
    decoder = FrameDecoder(framing)
    decoder.receive_data(data)
    frames = list(decoder)
    assert len(frames) == 1, frames
    return frames[0]


def event(tag: str, seq: int | None = None, **data: Any) -> Frame:
    """An event frame as the publisher sends it (numbered), or as Salt's does (``seq=None``)."""
    head = {} if seq is None else {"seq": seq, "time": 1.0}
    return decoded(encode_frame(pack_body(tag, data), head))


def control(message: Any) -> Frame:
    return decoded(encode_control(message, Framing.BARE))


def subscribe_sent(session: SubscriberSession, data: bytes) -> Subscribe:
    """What a publisher reads from a frame the session made."""
    message = decode_control(decoded(data, session.framing))
    assert isinstance(message, Subscribe), message
    return message


def seqs(session: SubscriberSession, *frames: Frame) -> list[int | None]:
    """The seqs of the events the session delivers from ``frames``, in order."""
    delivered = [session.handle(frame) for frame in frames]
    return [e.seq for e in delivered if e is not None]


def resumed(since: int, epoch: int | None = 1, **subscribed: Any) -> SubscriberSession:
    """A session that said hello resuming after ``since``, and was answered ``subscribed``."""
    session = SubscriberSession((), Framing.BARE, since=since, epoch=epoch)
    session.hello()
    session.handle(control(Subscribed(**{"epoch": 1, "replaying": True, **subscribed})))
    return session


# -- the frames it sends -------------------------------------------------------------------


def test_hello_without_a_position_asks_for_live_events_only() -> None:
    session = SubscriberSession(APP, Framing.BARE)
    assert subscribe_sent(session, session.hello()) == Subscribe(APP, None, None)
    assert not session.subscribed


def test_hello_resumes_after_the_last_seq_in_its_epoch() -> None:
    session = SubscriberSession(APP, Framing.BARE, since=41, epoch=7)
    assert subscribe_sent(session, session.hello()) == Subscribe(APP, 41, 7)
    session.handle(control(Subscribed(seq=41, epoch=7, replaying=True, first=1)))
    assert seqs(session, event("app/a", 42)) == [42]
    # The next connection resumes after what was delivered meanwhile.
    assert subscribe_sent(session, session.hello()) == Subscribe(APP, 42, 7)


def test_hello_without_resume_never_asks_for_a_replay() -> None:
    session = SubscriberSession(APP, Framing.BARE, resume=False, since=41, epoch=7)
    assert subscribe_sent(session, session.hello()).since is None
    # Nothing is held back waiting for a replay that was not asked for.
    assert seqs(session, event("app/a", 50)) == [50]


def test_hello_is_framed_for_the_salt_generation() -> None:
    session = SubscriberSession(APP, Framing.LENGTH_PREFIXED, since=3, epoch=1)
    data = session.hello()
    assert data[:4] == (len(data) - 4).to_bytes(4, "big")  # 3006's length prefix
    assert subscribe_sent(session, data) == Subscribe(APP, 3, 1)


def test_patterns_are_deduplicated_and_an_empty_one_means_everything() -> None:
    twice = SubscriberSession([*APP, *APP, ("x", MatchType.FIND)], Framing.BARE)
    assert twice.patterns == (*APP, ("x", MatchType.FIND))
    everything = SubscriberSession([*APP, ("", MatchType.REGEX)], Framing.BARE)
    assert everything.patterns == ()
    assert subscribe_sent(everything, everything.hello()).patterns == ()


def test_set_patterns_tells_the_publisher_without_asking_for_a_replay() -> None:
    session = SubscriberSession(APP, Framing.BARE, since=9, epoch=2)
    changed = (("salt/job/", MatchType.STARTSWITH),)
    assert subscribe_sent(session, session.set_patterns(changed)) == Subscribe(changed, None, 2)
    assert seqs(session, event("app/a", 10), event("salt/job/1/new", 11)) == [11]


# -- resuming: duplicates, positions, epochs -----------------------------------------------


def test_live_events_are_dropped_until_the_resume_is_confirmed() -> None:
    """The publisher may send live events before its Subscribed: the replay
    after it sends them again, in order, so the ones before are dropped."""
    session = SubscriberSession((), Framing.BARE, since=5, epoch=1)
    session.hello()
    assert seqs(session, event("a", 6), event("a", 7)) == []
    assert session.last_seq == 5
    session.handle(control(Subscribed(seq=7, epoch=1, replaying=True, first=1)))
    assert session.subscribed
    assert seqs(session, event("a", 6), event("a", 7), event("a", 8)) == [6, 7, 8]
    assert session.last_seq == 8


def test_events_at_or_before_the_last_seq_are_dropped() -> None:
    session = resumed(since=5, seq=8, first=1)
    got = seqs(session, event("a", 6), event("a", 6), event("a", 5), event("a", 7), event("a", 3))
    assert got == [6, 7]
    assert session.last_seq == 7
    assert session.lost == 0


def test_a_fresh_session_takes_its_position_from_subscribed() -> None:
    session = SubscriberSession((), Framing.BARE)
    session.hello()
    session.handle(control(Subscribed(seq=10, epoch=4)))
    assert (session.last_seq, session.epoch) == (10, 4)
    assert seqs(session, event("a", 10), event("a", 11)) == [11]


def test_without_resume_the_position_is_not_taken_from_subscribed() -> None:
    session = SubscriberSession((), Framing.BARE, resume=False)
    session.hello()
    session.handle(control(Subscribed(seq=10, epoch=4)))
    assert session.last_seq is None
    assert session.epoch == 4
    assert seqs(session, event("a", 11)) == [11]


def test_a_new_epoch_starts_the_position_again(caplog: pytest.LogCaptureFixture) -> None:
    """The publisher numbers from 1 again (a new journal): the old position
    means nothing there, and what was fired meanwhile cannot be replayed."""
    session = SubscriberSession((), Framing.BARE, since=500, epoch=1)
    session.hello()
    session.handle(control(Subscribed(seq=3, epoch=2)))
    assert (session.last_seq, session.epoch) == (3, 2)
    assert "numbering started again" in caplog.text
    assert seqs(session, event("a", 4)) == [4]


def test_the_same_epoch_keeps_the_position(caplog: pytest.LogCaptureFixture) -> None:
    session = resumed(since=500, seq=520, first=1)
    assert (session.last_seq, session.epoch) == (500, 1)
    assert "numbering started again" not in caplog.text


def test_a_position_given_without_an_epoch_is_kept() -> None:
    session = SubscriberSession((), Framing.BARE, since=500)
    session.hello()
    session.handle(control(Subscribed(seq=520, epoch=9, replaying=True, first=1)))
    assert (session.last_seq, session.epoch) == (500, 9)


# -- what is counted as lost ---------------------------------------------------------------


def test_events_before_the_first_replayable_one_are_counted_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = resumed(since=10, seq=30, first=15)
    assert session.lost == 4  # 11 to 14, gone to retention
    assert "4 events after seq 10 are no longer journaled" in caplog.text
    assert seqs(session, event("a", 15)) == [15]


def test_nothing_is_lost_when_the_replay_starts_right_after_since() -> None:
    assert resumed(since=10, seq=30, first=11).lost == 0
    assert resumed(since=10, seq=30, first=3).lost == 0
    assert resumed(since=10, seq=30, first=None).lost == 0


def test_first_is_not_counted_without_a_replay() -> None:
    assert resumed(since=10, seq=30, first=15, replaying=False).lost == 0


def test_gaps_are_counted_lost_for_their_part_after_since(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # (5, 8) was before since; 11 and 12 of (9, 12) are after it; (20, 20) is.
    session = resumed(since=10, seq=40, first=1, gaps=((5, 8), (9, 12), (20, 20)))
    assert session.lost == 3
    assert "events 9 to 12" in caplog.text and "missed 2 of them" in caplog.text
    assert "events 5 to 8" not in caplog.text


def test_retention_and_gaps_add_up() -> None:
    assert resumed(since=10, seq=40, first=15, gaps=((16, 17),)).lost == 4 + 2


def test_losses_add_up_across_reconnects() -> None:
    session = resumed(since=10, seq=30, first=15)
    assert seqs(session, event("a", 15), event("a", 16)) == [15, 16]
    session.hello()
    session.handle(control(Subscribed(seq=40, epoch=1, replaying=True, first=20)))
    assert session.lost == 4 + 3  # 11-14, then 17-19


# -- control frames ------------------------------------------------------------------------


def test_lagged_raises_lagged_error_naming_what_was_delivered() -> None:
    session = resumed(since=1, seq=1)
    with pytest.raises(LaggedError, match="after 1234 events"):
        session.handle(control(Lagged(1234)))


def test_refused_raises_access_denied_with_the_reason() -> None:
    session = SubscriberSession((), Framing.BARE)
    with pytest.raises(AccessDeniedError, match="uid 1000 may not listen"):
        session.handle(control(Refused("uid 1000 may not listen")))


def test_stats_are_kept() -> None:
    session = SubscriberSession((), Framing.BARE)
    assert session.handle(control(Stats({"subscribers": 3}))) is None
    assert session.stats == Stats({"subscribers": 3})


def test_control_frames_a_listener_does_not_act_on_change_nothing() -> None:
    session = SubscriberSession((), Framing.BARE, since=5, epoch=1)
    session.hello()
    for message in (Welcome(), Ack(1, 2), Nack(1, "full"), Subscribe(APP, 3)):
        assert session.handle(control(message)) is None
    assert (session.last_seq, session.subscribed, session.lost) == (5, False, 0)
    assert seqs(session, event("a", 6)) == []  # still waiting for Subscribed


def test_a_malformed_control_frame_is_a_protocol_error() -> None:
    session = SubscriberSession((), Framing.BARE)
    with pytest.raises(RemoteProtocolError):
        session.handle(decoded(encode_frame(b"", {"not": "control"})))


# -- events --------------------------------------------------------------------------------


def test_matchers_are_applied_client_side_and_skipped_events_still_move_the_position() -> None:
    patterns = [("app/", MatchType.STARTSWITH), ("/done", MatchType.ENDSWITH)]
    session = SubscriberSession(patterns, Framing.BARE)
    got = [
        session.handle(event(tag, seq, n=seq))
        for seq, tag in enumerate(["app/x", "job/done", "other/x", "app/done"], start=1)
    ]
    assert got == [
        Event("app/x", {"n": 1}, 1),
        Event("job/done", {"n": 2}, 2),
        None,
        Event("app/done", {"n": 4}, 4),
    ]
    assert session.last_seq == 4


@pytest.mark.parametrize(
    ("pattern", "match_type", "delivered"),
    [
        ("app/", MatchType.STARTSWITH, ["app/one", "app/two/done"]),
        ("/done", MatchType.ENDSWITH, ["app/two/done"]),
        ("two", MatchType.FIND, ["app/two/done", "two"]),
        (r"app/\w+$", MatchType.REGEX, ["app/one"]),
        ("app/*", MatchType.FNMATCH, ["app/one", "app/two/done"]),
    ],
)
def test_each_match_type_filters_client_side(
    pattern: str, match_type: MatchType, delivered: list[str]
) -> None:
    session = SubscriberSession([(pattern, match_type)], Framing.BARE)
    frames = [event(tag) for tag in ("app/one", "app/two/done", "two", "other")]
    assert [e.tag for f in frames if (e := session.handle(f)) is not None] == delivered


def test_events_from_a_salt_publisher_pass_through_unnumbered() -> None:
    """Salt's publisher numbers nothing and never answers a Subscribe: its
    events are not held back by a resume that will never be confirmed."""
    session = SubscriberSession((), Framing.BARE, since=5, epoch=1)
    session.hello()
    assert session.handle(event("salt/auth", None, id="m1")) == Event("salt/auth", {"id": "m1"})
    assert session.last_seq == 5


@pytest.mark.parametrize("seq", [True, "7", 7.0])
def test_a_seq_that_is_not_an_int_is_no_seq(seq: object) -> None:
    session = SubscriberSession((), Framing.BARE, since=5, epoch=1)
    frame = decoded(encode_frame(pack_body("odd", {}), {"seq": seq}))
    assert session.handle(frame) == Event("odd", {}, None)
    assert session.last_seq == 5


def test_an_undecodable_event_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    session = SubscriberSession((), Framing.BARE)
    assert session.handle(decoded(encode_frame(b"bad\n\n\xc1", {"seq": 1}))) is None
    assert "cannot be decoded" in caplog.text
    assert seqs(session, event("good", 2)) == [2]


# -- a Salt publisher of another generation ------------------------------------------------


def test_another_generations_framing_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    session = SubscriberSession((), Framing.BARE, salt_version="3007")
    session.observe_framing(Framing.BARE)
    assert caplog.text == ""
    session.observe_framing(Framing.LENGTH_PREFIXED)
    session.observe_framing(Framing.LENGTH_PREFIXED)
    assert caplog.text.count("publishes in Salt 3006's framing") == 1
    assert "salt_version is 3007" in caplog.text


def test_saltbus_publisher_takes_any_framing(caplog: pytest.LogCaptureFixture) -> None:
    session = SubscriberSession((), Framing.BARE, salt_version="3007")
    session.publisher_is_saltbus = True
    session.observe_framing(Framing.LENGTH_PREFIXED)
    session.handle(event("salt/x", None, _stamp=STAMP_3008))
    assert caplog.text == ""


@pytest.mark.parametrize(
    ("salt_version", "warned"), [("3006", True), ("3007", True), ("3008", False)]
)
def test_events_stamped_by_salt_3008_tell_a_3008_bus(
    caplog: pytest.LogCaptureFixture, salt_version: str, warned: bool
) -> None:
    session = SubscriberSession((), Framing.BARE, salt_version=salt_version)
    session.handle(event("salt/x", None, _stamp=STAMP_3008))
    session.handle(event("salt/y", None, _stamp=STAMP_3008))
    assert caplog.text.count("stamped by Salt 3008's clients") == (1 if warned else 0)
    # A stamp without an offset, as 3006 and 3007 write it, tells nothing.
    quiet = SubscriberSession((), Framing.BARE, salt_version="3007")
    caplog.clear()
    quiet.handle(event("salt/z", None, _stamp="2026-12-03T22:40:59.123456"))
    assert caplog.text == ""
