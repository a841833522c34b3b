"""``POST /hook/<path>``: webhooks as salt-api's, onto the bus.

The request fires ``<prefix>/<path>`` with ``{"body": <raw body as text>,
"post": <body parsed as JSON or a form, else {}>, "headers": {...}}`` and is
answered ``{"success": true}`` as salt-api's ``/hook`` is (prefix
``salt/netapi/hook`` for Salt's reactor files written for salt-api), plus the
``tag`` and the ``seq`` the publisher gave the event, as ``POST /events``
answers (the fire is acknowledged: once answered, the event is journaled).

Who may call it:

- a path with a secret configured (``Settings.hook_secrets``, fnmatch patterns
  of the path) needs a valid GitHub-style ``X-Hub-Signature-256: sha256=<hex>``
  HMAC of the body, and that is enough: senders such as GitHub cannot add a
  bearer token, and the shared secret authenticates them;
- any other path needs a token (header, or ``?token=`` for senders that only
  take a URL) whose fire patterns allow the tag.

Unlike salt-api, credentials (``Authorization``, ``Cookie``, ``X-Auth-Token``)
are not copied into the event: whoever may read hook events must not learn
the tokens of those who may fire them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
from typing import Any, Final
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from saltbus.errors import SaltbusError
from saltbus.http.bridge import (
    BodyTooLargeError,
    Bridge,
    error,
    fire_failure_status,
    read_body,
    unauthorized,
)

log = logging.getLogger("saltbus.http")

SIGNATURE_HEADER: Final = "x-hub-signature-256"
WITHHELD_HEADERS: Final = frozenset({"authorization", "cookie", "x-auth-token"})


def sign(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value of ``body`` (what GitHub sends)."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def secret_for(secrets: dict[str, str], path: str) -> str | None:
    if path in secrets:
        return secrets[path]
    for pattern, secret in secrets.items():
        if fnmatch.fnmatchcase(path, pattern):
            return secret
    return None


def hook_tag(prefix: str, path: str) -> str:
    return "/".join(part for part in (prefix.strip("/"), path.strip("/")) if part)


def salt_headers(request: Request) -> dict[str, str]:
    """The request's headers named as CherryPy names them for salt-api
    (``X-Github-Event``), without credentials."""
    return {
        "-".join(word.capitalize() for word in name.split("-")): value
        for name, value in request.headers.items()
        if name not in WITHHELD_HEADERS
    }


def parse_post(content_type: str, body: bytes) -> Any:
    """The body as salt-api parses it: JSON or a form; anything else is ``{}``."""
    media = content_type.split(";", 1)[0].strip().lower()
    if not body:
        return {}
    if media == "application/json" or media.endswith("+json"):
        return json.loads(body)
    if media == "application/x-www-form-urlencoded":
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {key: values[0] if len(values) == 1 else values for key, values in form.items()}
    return {}


async def hook_endpoint(bridge: Bridge, request: Request) -> Response:
    path = request.path_params.get("path", "").strip("/")
    tag = hook_tag(bridge.settings.hook_prefix, path)
    secret = secret_for(dict(bridge.settings.hook_secrets), path)
    if secret is None:
        # Checked before the body is read: no upload without credentials.
        grant = bridge.grant(request, query_token=True)
        if grant is None:
            return unauthorized()
        if not grant.may_fire(tag):
            return error(403, f"token {grant.name!r} may not fire {tag!r}")
    try:
        body = await read_body(request, bridge.config.max_event_size)
    except BodyTooLargeError as exc:
        return error(413, str(exc))
    if secret is not None:
        presented = request.headers.get(SIGNATURE_HEADER, "")
        if not hmac.compare_digest(presented.encode(), sign(secret, body).encode()):
            log.warning("hook %r: missing or wrong %s", path, SIGNATURE_HEADER)
            return unauthorized(f"a valid {SIGNATURE_HEADER} signature is needed")
    try:
        post = parse_post(request.headers.get("content-type", ""), body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return error(400, f"body is not valid JSON: {exc}")
    data = {
        "body": body.decode("utf-8", "replace"),
        "post": post,
        "headers": salt_headers(request),
    }
    bridge.ensure_started()
    try:
        event = await bridge.hub.fire(tag, data)
    except SaltbusError as exc:
        status = fire_failure_status(exc)
        if status >= 500:
            log.warning("hook %r: not fired: %s", path, exc)
        return JSONResponse({"success": False, "error": str(exc)}, status)
    return JSONResponse({"success": True, "tag": tag, "seq": event.seq})
