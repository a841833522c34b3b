"""Tests of saltbus.event: tagify, the five tag matchers, stamps and Event."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saltbus.errors import ConfigError
from saltbus.event import Event, MatchType, tag_matcher, tagify, utc_stamp

# -- tagify (Salt's salt.utils.event.tagify) -------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((["abc", "new"], "job"), "salt/job/abc/new"),
        (("x",), "salt/x"),
        ((), "salt"),
        (("start", "minion"), "salt/minion/start"),
        ((["20240101", "ret", "m1"], "job"), "salt/job/20240101/ret/m1"),
        (("", "auth"), "salt/auth"),
        ((["", "a", "", "b"],), "salt/a/b"),
        (("x", "custom"), "salt/custom/x"),  # prefixes outside Salt's table pass through
        (("x", "", "myapp"), "myapp/x"),
        (("x", "job", ""), "job/x"),
        (("a/b", "wheel"), "salt/wheel/a/b"),
    ],
)
def test_tagify(args: tuple[object, ...], expected: str) -> None:
    assert tagify(*args) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "prefix",
    ["auth", "job", "key", "minion", "syndic", "run", "wheel", "cloud", "fileserver", "queue"],
)
def test_tagify_prefix_table(prefix: str) -> None:
    assert tagify("x", prefix) == f"salt/{prefix}/x"


def test_tagify_keyword_arguments() -> None:
    assert tagify(suffix="new", prefix="run", base="salt") == "salt/run/new"
    assert tagify(prefix="key") == "salt/key"


@pytest.mark.parametrize(
    ("suffix", "expected"),
    [
        # Salt turns every part into a str first, then drops the empty ones:
        # 0, None and False are kept as "0", "None" and "False".
        (["a", 0], "salt/a/0"),
        (["a", 1, 2.5], "salt/a/1/2.5"),
        (["a", None], "salt/a/None"),
        (["a", False], "salt/a/False"),
        (["a", b"b"], "salt/a/b"),  # bytes are decoded, not repr'd
        (["a", bytearray(b"c")], "salt/a/c"),
        (5, "salt/5"),  # a scalar suffix is one part
        (b"ret", "salt/ret"),  # bytes are one part, not a sequence of ints
        (0, "salt/0"),
    ],
)
def test_tagify_non_str_parts(suffix: object, expected: str) -> None:
    assert tagify(suffix) == expected  # type: ignore[arg-type]


def test_tagify_non_str_prefix_and_base() -> None:
    assert tagify("x", 7, "base") == "base/7/x"  # type: ignore[arg-type]


@given(st.lists(st.text(alphabet="abc/0", max_size=4), max_size=6))
def test_tagify_list_is_joined_without_empty_parts(parts: list[str]) -> None:
    expected = "/".join(["salt", *(p for p in parts if p)])
    assert tagify(parts) == expected


# -- matchers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match_type", "pattern", "tag", "expected"),
    [
        # startswith (Salt's default)
        (MatchType.STARTSWITH, "salt/job", "salt/job/1/new", True),
        (MatchType.STARTSWITH, "salt/job", "salt/jo", False),
        (MatchType.STARTSWITH, "job", "salt/job/1/new", False),
        (MatchType.STARTSWITH, "salt/*", "salt/job", False),  # no wildcards
        (MatchType.STARTSWITH, "Salt", "salt/job", False),  # case-sensitive
        # endswith
        (MatchType.ENDSWITH, "/start", "salt/minion/m1/start", True),
        (MatchType.ENDSWITH, "/start", "salt/minion/m1/start/", False),
        (MatchType.ENDSWITH, "salt", "salt/x", False),
        # find: anywhere
        (MatchType.FIND, "minion", "salt/minion/m1/start", True),
        (MatchType.FIND, "m1/st", "salt/minion/m1/start", True),
        (MatchType.FIND, "m2", "salt/minion/m1/start", False),
        # regex: "^" prepended, then search(): anchored at the start only
        (MatchType.REGEX, "salt/.*/start", "salt/minion/x/start", True),
        (MatchType.REGEX, "minion", "salt/minion", False),
        (MatchType.REGEX, "salt/minion", "salt/minion/x/start", True),  # no end anchor
        (MatchType.REGEX, "salt/job/\\d+/ret", "salt/job/2024/ret/m1", True),
        (MatchType.REGEX, "salt/job/\\d+/ret", "salt/job/abc/ret", False),
        (MatchType.REGEX, "a|salt", "salt/x", True),  # "^a|salt": the branch is unanchored
        (MatchType.REGEX, "(a|b)", "salt/x", False),
        (MatchType.REGEX, ".*start$", "salt/minion/x/start", True),
        # fnmatch: the whole tag
        (MatchType.FNMATCH, "salt/minion/*/start", "salt/minion/m1/start", True),
        (MatchType.FNMATCH, "salt/minion/*", "salt/minion/m1/start", True),  # * crosses /
        (MatchType.FNMATCH, "salt/minion", "salt/minion/m1/start", False),
        (MatchType.FNMATCH, "salt/job/?/new", "salt/job/1/new", True),
        (MatchType.FNMATCH, "salt/job/[0-9]*", "salt/job/x", False),
        (MatchType.FNMATCH, "SALT/*", "salt/x", False),
    ],
)
def test_matchers(match_type: MatchType, pattern: str, tag: str, expected: bool) -> None:
    assert tag_matcher(pattern, match_type)(tag) is expected


def test_default_match_type_is_startswith() -> None:
    assert tag_matcher("salt/job")("salt/job/1")
    assert not tag_matcher("job")("salt/job/1")


@pytest.mark.parametrize("match_type", list(MatchType))
@pytest.mark.parametrize("tag", ["", "salt/job/1/new", "x", "\u00e9/\n"])
def test_empty_pattern_matches_everything(match_type: MatchType, tag: str) -> None:
    assert tag_matcher("", match_type)(tag)


def reference_match(match_type: MatchType, pattern: str, tag: str) -> bool:
    """Salt's SaltEvent._match_tag_<type>, written out."""
    if match_type is MatchType.STARTSWITH:
        return tag.startswith(pattern)
    if match_type is MatchType.ENDSWITH:
        return tag.endswith(pattern)
    if match_type is MatchType.FIND:
        return tag.find(pattern) >= 0
    if match_type is MatchType.REGEX:
        return re.compile("^" + pattern).search(tag) is not None
    return fnmatch.fnmatch(tag, pattern)


TAGS = ["salt/abc", "salt/a.c", "salt/*", "abc", "xabc", "salt/a?c/d"]


@pytest.mark.parametrize("match_type", list(MatchType))
@pytest.mark.parametrize("pattern", ["salt/a.c", "salt/*", "abc", "c", "salt/a?c"])
def test_match_type_given_as_str(match_type: MatchType, pattern: str) -> None:
    # MatchType is a StrEnum: its plain str value must select the same matcher,
    # whichever form the cached matcher was first built with.
    expected = [reference_match(match_type, pattern, t) for t in TAGS]
    by_str = tag_matcher(pattern, match_type.value)
    assert [by_str(t) for t in TAGS] == expected
    by_enum = tag_matcher(pattern, match_type)
    assert [by_enum(t) for t in TAGS] == expected


def test_str_and_enum_match_types_do_not_share_a_wrong_matcher() -> None:
    pattern = "salt/a.c"  # regex: "." is any char; fnmatch: a literal "."
    assert tag_matcher(pattern, "fnmatch")("salt/abc") is False
    assert tag_matcher(pattern, MatchType.REGEX)("salt/abc") is True
    assert tag_matcher(pattern, "regex")("salt/abc") is True
    assert tag_matcher(pattern, MatchType.FNMATCH)("salt/abc") is False


@pytest.mark.parametrize("pattern", ["(", "salt/[", "*x", "a{1,0}"])
def test_invalid_regex_raises_config_error(pattern: str) -> None:
    with pytest.raises(ConfigError, match="regex"):
        tag_matcher(pattern, MatchType.REGEX)
    # Not cached as a success: still an error the second time.
    with pytest.raises(ConfigError):
        tag_matcher(pattern, MatchType.REGEX)


def test_invalid_regex_is_fine_for_other_match_types() -> None:
    assert tag_matcher("salt/[", MatchType.STARTSWITH)("salt/[x")
    assert tag_matcher("(", MatchType.FIND)("a(b")


@pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")
@given(
    st.text(alphabet="ab/.*?[]", max_size=6),
    st.text(alphabet="ab/.", max_size=8),
)
def test_matchers_agree_with_python(pattern: str, tag: str) -> None:
    if not pattern:
        return
    for match_type in MatchType:
        try:
            expected = reference_match(match_type, pattern, tag)
        except re.error:
            with pytest.raises(ConfigError):
                tag_matcher(pattern, match_type)
        else:
            assert tag_matcher(pattern, match_type)(tag) is expected


# -- MatchType.parse ----------------------------------------------------------------


def test_match_type_values_are_salts() -> None:
    assert [m.value for m in MatchType] == ["startswith", "endswith", "find", "regex", "fnmatch"]


@pytest.mark.parametrize("value", [None, ""])
def test_parse_empty_gives_default(value: str | None) -> None:
    assert MatchType.parse(value) is MatchType.STARTSWITH
    assert MatchType.parse(value, MatchType.FNMATCH) is MatchType.FNMATCH


@pytest.mark.parametrize("match_type", list(MatchType))
def test_parse_names(match_type: MatchType) -> None:
    assert MatchType.parse(match_type.value) is match_type
    assert MatchType.parse(match_type) is match_type
    assert MatchType.parse(match_type.value, MatchType.REGEX) is match_type


@pytest.mark.parametrize("value", ["glob", "Regex", "re", " startswith", "None"])
def test_parse_unknown_names_the_valid_ones(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        MatchType.parse(value)
    message = str(info.value)
    assert repr(value) in message
    for name in ("startswith", "endswith", "find", "regex", "fnmatch"):
        assert name in message


# -- stamps --------------------------------------------------------------------------

NAIVE_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?")


def test_utc_stamp_naive() -> None:
    before = datetime.now(UTC).replace(tzinfo=None)
    stamp = utc_stamp()
    after = datetime.now(UTC).replace(tzinfo=None)
    assert NAIVE_STAMP.fullmatch(stamp), stamp
    parsed = datetime.fromisoformat(stamp)
    assert parsed.tzinfo is None
    assert before <= parsed <= after  # UTC, not local time


def test_utc_stamp_with_offset() -> None:
    before = datetime.now(UTC)
    stamp = utc_stamp(with_offset=True)
    after = datetime.now(UTC)
    assert stamp.endswith("+00:00")
    assert NAIVE_STAMP.fullmatch(stamp.removesuffix("+00:00")), stamp
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == timedelta(0)
    assert before <= parsed <= after


def test_stamp_format_matches_salts_isoformat() -> None:
    # Salt: datetime.utcnow().isoformat(): no fraction when microseconds are 0.
    assert datetime(2024, 1, 1).isoformat() == "2024-01-01T00:00:00"
    assert NAIVE_STAMP.fullmatch("2024-01-01T00:00:00")
    assert NAIVE_STAMP.fullmatch("2026-11-27T01:14:42.721916")


# -- Event ---------------------------------------------------------------------------


def test_event_as_salt() -> None:
    event = Event("salt/job/1/new", {"jid": "1"})
    assert event.as_salt() == {"tag": "salt/job/1/new", "data": {"jid": "1"}}


@pytest.mark.parametrize("seq", [0, 1, 2**40])
def test_event_as_salt_with_seq(seq: int) -> None:
    event = Event("a/b", {"x": 1}, seq=seq)
    assert event.as_salt() == {"tag": "a/b", "data": {"x": 1}, "seq": seq}


def test_event_defaults_and_immutability() -> None:
    one, two = Event("a"), Event("b")
    assert one.data == {}
    assert one.seq is None
    assert one.data is not two.data
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.tag = "c"  # type: ignore[misc]
    assert Event("a", {"x": 1}, 3) == Event("a", {"x": 1}, 3)
    assert Event("a", {"x": 1}, 3) != Event("a", {"x": 1}, 4)
