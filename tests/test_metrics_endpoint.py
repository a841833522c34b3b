"""The metrics endpoint: its three paths over real loopback HTTP, an
ephemeral port, and addresses it refuses."""

from __future__ import annotations

import asyncio
import json

import pytest

from saltbus.errors import ConfigError
from saltbus.metrics.endpoint import MetricsEndpoint, parse_listen
from saltbus.metrics.health import Check, Readiness, Status
from tests.prometheus_support import http_get


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9108") == ("127.0.0.1", 9108)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("9108", "127.0.0.1", "127.0.0.1:http", ":9108", "host:70000"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            parse_listen(bad)


def test_the_three_paths_on_an_ephemeral_port() -> None:
    ready = {"now": True}

    async def metrics() -> bytes:
        return b"# HELP x_total x\n# TYPE x_total counter\nx_total 3.0\n"

    async def readiness() -> Readiness:
        status = Status.OK if ready["now"] else Status.CRITICAL
        return Readiness((Check("journal", status, "detail"),))

    async def scenario() -> None:
        async with MetricsEndpoint("127.0.0.1:0", metrics=metrics, readiness=readiness) as ep:
            assert ep.port != 0
            get = lambda path: asyncio.to_thread(http_get, f"{ep.url}{path}")  # noqa: E731
            status, body = await get("/metrics")
            assert (status, body.splitlines()[-1]) == (200, "x_total 3.0")
            assert await get("/healthz") == (200, '{"status": "ok"}\n')
            status, body = await get("/readyz")
            assert status == 200 and json.loads(body)["ready"] is True
            ready["now"] = False
            status, body = await get("/readyz")
            assert status == 503 and json.loads(body)["failed"] == ["journal"]
            assert (await get("/nothing"))[0] == 404
            assert (await get("/metrics?name=x"))[0] == 200

    asyncio.run(scenario())


def test_a_port_in_use_is_one_clear_error() -> None:
    async def scenario() -> None:
        async def nothing() -> bytes:
            return b""

        async def ready() -> Readiness:
            return Readiness(())

        async with MetricsEndpoint("127.0.0.1:0", metrics=nothing, readiness=ready) as first:
            second = MetricsEndpoint(f"127.0.0.1:{first.port}", metrics=nothing, readiness=ready)
            with pytest.raises(
                ConfigError, match=f"cannot serve metrics on 127.0.0.1:{first.port}"
            ):
                await second.start()

    asyncio.run(scenario())


def test_a_failing_metrics_source_answers_503_and_the_endpoint_goes_on() -> None:
    async def broken() -> bytes:
        raise RuntimeError("statistics unavailable")

    async def ready() -> Readiness:
        return Readiness(())

    async def scenario() -> None:
        async with MetricsEndpoint("127.0.0.1:0", metrics=broken, readiness=ready) as ep:
            status, body = await asyncio.to_thread(http_get, f"{ep.url}/metrics")
            assert status == 503 and "statistics unavailable" in body
            assert (await asyncio.to_thread(http_get, f"{ep.url}/healthz"))[0] == 200

    asyncio.run(scenario())
