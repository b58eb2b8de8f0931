"""`redis+sentinel://` URLs: what they say, what they refuse, and kombu's spelling of them."""

from __future__ import annotations

import pytest
from kombu.connection import Connection

from orchestrator.redisurl import SentinelUrl, redacted, sentinel_url


def test_a_full_url_names_every_sentinel_the_service_the_db_and_both_credentials() -> None:
    url = SentinelUrl.parse(
        "redis+sentinel://ops:p%40ss%3Aw%2Fd@s1.example.net:26379,s2:26380,[::1]"
        "/prod-redis/3?sentinel_password=s%26cret&sentinel_username=watch"
    )
    assert url.sentinels == (("s1.example.net", 26379), ("s2", 26380), ("::1", 26379))
    assert (url.service, url.db) == ("prod-redis", 3)
    assert url.master_auth() == {"username": "ops", "password": "p@ss:w/d"}
    assert url.sentinel_auth() == {"username": "watch", "password": "s&cret"}


def test_the_short_forms_default_the_port_the_db_and_the_credentials() -> None:
    url = SentinelUrl.parse("redis+sentinel://:pw@sentinel/vmorch")
    assert url.sentinels == (("sentinel", 26379),)
    assert (url.service, url.db) == ("vmorch", 0)
    assert url.master_auth() == {"password": "pw"}  # no username: the default user
    assert url.sentinel_auth() == {}
    bare = SentinelUrl.parse("REDIS+SENTINEL://h1,h2/vmorch/")
    assert bare.sentinels == (("h1", 26379), ("h2", 26379))
    assert bare.master_auth() == {}


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:pw@h1:26379,[2001:db8::7]:26380/svc/2?sentinel_password=x%2Fy",
        "redis+sentinel://user:@h1/svc/0",
        "redis+sentinel://h1:1/a%2Fb/15",
    ],
)
def test_a_url_written_back_reads_the_same(url: str) -> None:
    parsed = SentinelUrl.parse(url)
    assert SentinelUrl.parse(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("redis+sentinel://h1:26379", "/<service name>"),
        ("redis+sentinel://h1:26379/", "/<service name>"),
        ("redis+sentinel://h1/svc/zero", "must be a number"),
        ("redis+sentinel://h1/svc/0/extra", "/<service name>"),
        ("redis+sentinel://h1:0/svc", "bad Sentinel port"),
        ("redis+sentinel://h1:70000/svc", "bad Sentinel port"),
        ("redis+sentinel://h1:port/svc", "bad Sentinel port"),
        ("redis+sentinel://h1,,h2/svc", "needs a host"),
        ("redis+sentinel://:pw@/svc", "needs a host"),
        ("redis+sentinel://[::1/svc", "bad Sentinel address"),
        ("redis+sentinel://h1/svc?socket_timeout=1", "unknown redis+sentinel:// options"),
        ("redis://h1/0", "not a redis+sentinel:// URL"),
    ],
)
def test_a_malformed_url_is_refused_with_what_is_wrong(url: str, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("+", r"\+")) as caught:
        SentinelUrl.parse(url)
    assert "pw" not in str(caught.value)  # the message never repeats the URL (passwords)


def test_only_the_sentinel_scheme_is_ours() -> None:
    for url in ("redis://:pw@h:6379/0", "rediss://h/1", "unix:///run/redis.sock?db=2"):
        assert sentinel_url(url) is None  # redis-py's own
    assert sentinel_url("redis+sentinel://h/svc") == SentinelUrl((("h", 26379),), "svc")


def test_kombu_reads_the_same_sentinels_credentials_and_db() -> None:
    url = SentinelUrl.parse("redis+sentinel://:p%40ss@s1:26379,[::1]:26380/svc/4")
    conn = Connection(url.kombu_url())  # type: ignore[no-untyped-call]
    alternates = [Connection(alt) for alt in conn.alt]  # type: ignore[no-untyped-call]
    assert conn.transport_cls == "sentinel"
    assert [(c.hostname, c.port) for c in alternates] == [("s1", 26379), ("::1", 26380)]
    assert {(c.password, c.virtual_host) for c in alternates} == {("p@ss", "4")}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "redis+sentinel://ops:p%40ss@h1,h2:26380/s/1?sentinel_password=s3&sentinel_username=u",
            "redis+sentinel://ops:****@h1,h2:26380/s/1?sentinel_password=****&sentinel_username=u",
        ),
        ("redis://:pw@redis:6379/0", "redis://:****@redis:6379/0"),
        ("unix:///run/redis.sock?db=2&password=pw", "unix:///run/redis.sock?db=2&password=****"),
        ("rediss://user@h/1", "rediss://user@h/1"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_a_url_in_a_message_shows_no_password(url: str, shown: str) -> None:
    assert redacted(url) == shown


def test_a_malformed_query_is_refused_without_quoting_it() -> None:
    with pytest.raises(ValueError, match="name=value pairs") as caught:
        SentinelUrl.parse("redis+sentinel://h/svc?sentinel_password=a&b&c")
    assert "&b" not in str(caught.value)
