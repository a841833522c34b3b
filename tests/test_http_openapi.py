"""/openapi.json describes exactly the app's routes."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from starlette.routing import Mount, Route, WebSocketRoute

from saltbus.config import Config
from saltbus.http import SALT_HOOK_PREFIX, create_app
from tests.http_support import in_process


def _document(config: Config, **options: Any) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        async with in_process(create_app(config, **options)) as client:
            answer = await client.get("/openapi.json")
            assert answer.status_code == 200
            return answer.json()  # type: ignore[no-any-return]

    return asyncio.run(main())


def _app_operations(config: Config) -> set[tuple[str, str]]:
    operations = set()
    for route in create_app(config).routes:
        if isinstance(route, Mount):
            continue  # the page's static files
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        if isinstance(route, WebSocketRoute):
            operations.add((path, "get"))
        else:
            assert isinstance(route, Route) and route.methods
            operations |= {(path, m.lower()) for m in route.methods if m != "HEAD"}
    return operations


def test_the_document_matches_the_routes(bus_config: Config):
    document = _document(bus_config)
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented == _app_operations(bus_config)


def test_the_document_is_well_formed(bus_config: Config):
    document = _document(bus_config)
    assert document["openapi"].startswith("3.")
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["summary"], (path, method)
            assert operation["responses"], (path, method)
            for parameter in operation.get("parameters", []):
                assert parameter["in"] in ("query", "header", "path")
            placeholders = set(re.findall(r"\{(\w+)\}", path))
            in_path = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert placeholders == in_path, (path, method)
    refs = re.findall(r'"\$ref": "#/components/schemas/(\w+)"', str(document).replace("'", '"'))
    assert set(refs) <= set(document["components"]["schemas"])


def test_the_document_follows_the_settings(bus_config: Config):
    document = _document(bus_config, hook_prefix=SALT_HOOK_PREFIX)
    assert "salt/netapi/hook/<path>" in document["paths"]["/hook/{path}"]["post"]["summary"]
    assert document["security"] == []  # no tokens: no authentication
