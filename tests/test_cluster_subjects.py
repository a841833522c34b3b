"""Tags as NATS subjects and patterns as filter subjects (saltbus.cluster.subjects)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from saltbus.cluster.subjects import (
    MAX_SUBJECT,
    SubjectFilter,
    TagPattern,
    batch_subject,
    escape_token,
    patterns_matcher,
    subject_filter,
    subject_to_tag,
    tag_to_subject,
    unescape_token,
)
from saltbus.errors import RemoteProtocolError
from saltbus.event import MatchType, tag_matcher

# Tags are UTF-8 on the wire: any text without lone surrogates.
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
segments = st.lists(
    st.one_of(text, st.sampled_from(["", ".", "*", ">", "%", "%25", "a b", "é", "日本", "\t"])),
    min_size=1,
    max_size=8,
)
tags = segments.map("/".join)


def nats_match(filter_subject: str, subject: str) -> bool:
    """NATS's own rule: ``*`` is one token, ``>`` one or more at the end."""
    want, have = filter_subject.split("."), subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(want) == len(have)


def valid_tokens(subject: str) -> bool:
    return all(
        token and token.isascii() and token.isprintable() and not any(c in token for c in " *>")
        for token in subject.split(".")
    )


@given(tags)
@example("salt/job/20240101/ret/web1.example.com")
@example("")
@example("/")
@example("a//b/")
@example("%/%25/%%")
@example("x/*/>")
@example("ünïcødé/日本語/🙂")
@example("line\nbreak/tab\there")
def test_every_tag_round_trips_through_valid_tokens(tag: str):
    subject = tag_to_subject(tag)
    assert len(subject) <= MAX_SUBJECT
    assert valid_tokens(subject), subject
    assert subject.startswith("saltbus.ev.")
    assert subject.count(".") == 1 + len(tag.split("/"))
    assert subject_to_tag(subject) == tag


@given(text)
def test_a_segment_round_trips_through_one_token(segment: str):
    token = escape_token(segment)
    assert "." not in token and token
    assert unescape_token(token) == segment


@given(st.lists(text, min_size=2, max_size=2, unique=True))
def test_different_segments_make_different_tokens(pair: list[str]):
    assert escape_token(pair[0]) != escape_token(pair[1])


def test_the_escaping_reads_well_for_salt_tags():
    assert tag_to_subject("salt/auth") == "saltbus.ev.salt.auth"
    assert tag_to_subject("salt/job/123/ret/web-1_a") == "saltbus.ev.salt.job.123.ret.web-1_a"
    assert tag_to_subject("salt/minion/web1.example.com/start") == (
        "saltbus.ev.salt.minion.web1%2Eexample%2Ecom.start"
    )
    assert tag_to_subject("a//b/", "x") == "x.a.%.b.%"
    assert tag_to_subject("100%/é") == "saltbus.ev.100%25.%C3%A9"


@pytest.mark.parametrize("token", ["%41", "%c3%a9", "%2", "a%", "a.b", "%~", "", "%ZZ", "%FF"])
def test_tokens_saltbus_never_makes_are_refused(token: str):
    with pytest.raises(RemoteProtocolError):
        unescape_token(token)


def test_a_subject_outside_the_prefix_is_refused():
    with pytest.raises(RemoteProtocolError):
        subject_to_tag("other.salt.auth")


def test_a_long_tag_is_cut_after_the_tokens_that_fit_and_its_tag_stays_in_the_header():
    tag = "salt/job/" + "x" * 3000 + "/ret"
    subject = tag_to_subject(tag)
    assert subject == "saltbus.ev.salt.job.%~"
    assert nats_match("saltbus.ev.salt.job.>", subject)
    with pytest.raises(RemoteProtocolError):
        subject_to_tag(subject)
    many = "/".join(["seg"] * 1000)
    cut = tag_to_subject(many)
    assert len(cut) <= MAX_SUBJECT and cut.endswith(".seg.%~")


# -- patterns -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        ([], SubjectFilter("saltbus.ev.>", True)),
        (["salt/job/"], SubjectFilter("saltbus.ev.salt.job.>", True)),
        (["salt/job"], SubjectFilter("saltbus.ev.salt.>", False)),
        (["salt"], SubjectFilter("saltbus.ev.>", False)),
        (["salt/job/", "salt/auth"], SubjectFilter("saltbus.ev.salt.>", False)),
        (["salt/job/", "app/"], SubjectFilter("saltbus.ev.>", False)),
        (["salt/job/", ""], SubjectFilter("saltbus.ev.>", True)),
        (["fnmatch:salt/job/*/ret/*"], SubjectFilter("saltbus.ev.salt.job.>", False)),
        (["regex:salt/.*"], SubjectFilter("saltbus.ev.>", False)),
        (["endswith:/ret"], SubjectFilter("saltbus.ev.>", False)),
        (["web1.example.com/"], SubjectFilter("saltbus.ev.web1%2Eexample%2Ecom.>", True)),
    ],
)
def test_patterns_become_the_narrowest_filter_subject(patterns: list[str], expected: SubjectFilter):
    assert subject_filter([TagPattern.parse(p) for p in patterns]) == expected


@given(tags, st.integers(0, 60), st.booleans())
def test_a_filter_never_misses_a_tag_its_pattern_matches(tag: str, cut: int, long: bool):
    if long:
        tag = tag + "/" + "y" * 2500 + "/z"
    pattern = TagPattern(tag[:cut])
    subject = tag_to_subject(tag)
    found = subject_filter([pattern])
    assert tag_matcher(pattern.pattern, pattern.match_type)(tag)
    assert nats_match(found.subject, subject), (found, subject)


@given(tags, tags)
def test_an_exact_filter_selects_exactly_what_the_pattern_matches(pattern_tag: str, tag: str):
    pattern = TagPattern(pattern_tag.rsplit("/", 1)[0] + "/")
    found = subject_filter([pattern])
    assert found.exact
    assert nats_match(found.subject, tag_to_subject(tag)) == tag.startswith(pattern.pattern)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("salt/job/", TagPattern("salt/job/")),
        ("fnmatch:salt/*/ret", TagPattern("salt/*/ret", MatchType.FNMATCH)),
        ("regex:^a|b", TagPattern("^a|b", MatchType.REGEX)),
        ("endswith:/ret", TagPattern("/ret", MatchType.ENDSWITH)),
        ("find:web", TagPattern("web", MatchType.FIND)),
        ("startswith:regex:x", TagPattern("regex:x")),
        ("app:deploy/", TagPattern("app:deploy/")),
    ],
)
def test_pattern_text_names_its_match_type_and_round_trips(text: str, pattern: TagPattern):
    assert TagPattern.parse(text) == pattern
    assert TagPattern.parse(str(pattern)) == pattern


def test_a_batch_subject_is_selected_by_exactly_the_filters_that_select_its_events():
    def selects(filter_subject: str, subject: str) -> bool:
        head = filter_subject.removesuffix(".>").split(".")
        tokens = subject.split(".")
        return len(tokens) > len(head) and tokens[: len(head)] == head

    events = ["salt/job/1/ret/m1", "salt/job/1/ret/m2"]
    subjects = [tag_to_subject(tag) for tag in events]
    batch = batch_subject(subjects[0])
    assert batch == "saltbus.ev.salt.job.1.ret.%+"
    assert batch_subject(subjects[1]) == batch
    with pytest.raises(RemoteProtocolError):
        subject_to_tag(batch)  # no tag is ever taken for a batch's subject
    for pattern in [
        "",
        "salt/",
        "salt/job/1/",
        "salt/job/1/ret/",
        "salt/job/1/ret/m1",
        "salt/job/2/",
    ]:
        filter_subject = subject_filter([TagPattern(pattern)]).subject
        assert selects(filter_subject, batch) == any(selects(filter_subject, s) for s in subjects)
    assert batch_subject(tag_to_subject("lone")) == "saltbus.ev.%+"


def test_patterns_matcher_agrees_with_matching_each_pattern():
    assert patterns_matcher([]) is None  # every tag
    assert patterns_matcher([TagPattern("salt/"), TagPattern("")]) is None
    tags = ["salt/job/1/ret/m", "salt/auth", "app/x", "xsalt/", "a/b.end", "", "s"]
    for texts in (
        ["salt/job/"],
        ["salt/job/", "app/"],
        ["endswith:.end", "salt/auth"],
        ["regex:a/b", "fnmatch:*ret*", "find:uth", "app/"],
        ["startswith:s", "endswith:s"],
    ):
        patterns = [TagPattern.parse(text) for text in texts]
        selects = patterns_matcher(patterns)
        assert selects is not None
        for tag in tags:
            expected = any(tag_matcher(p.pattern, p.match_type)(tag) for p in patterns)
            assert selects(tag) is expected, (texts, tag)
