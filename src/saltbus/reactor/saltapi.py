"""Salt's reactions through salt-api, for a master on another host.

With a ``salt_api:`` section the ``local``, ``runner`` and ``wheel``
reactions are POSTed to salt-api instead of going through a local helper::

    salt_api:
      url: https://salt.example.com:8000/run   # salt-api's /run (rest_cherrypy,
      username: saltbus                        #  rest_tornado)
      password: secret
      eauth: pam                               # default: auto
      timeout: 60                              # seconds (default 60)
      verify: true                             # the server's certificate

Each request carries the eauth credentials (salt-api's ``/run`` form, so no
session token to keep): ``local`` as ``local_async`` (the jid and minions,
without waiting for them), ``runner`` with ``full_return`` (jid and
return), ``wheel`` (jid and return; rest_tornado has no wheel client, so
there wheel reactions fail with salt-api's answer). Answers have the helper's shape (see
:mod:`.salt_helper`), so the reactor does not tell the two apart.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, Final

from saltbus.errors import ConfigError
from saltbus.reactor.errors import SaltUnreachableError

KEYS: Final = frozenset(("url", "username", "password", "eauth", "timeout", "verify"))
DEFAULT_TIMEOUT: Final = 60.0
BODY_LIMIT: Final = 64 * 1024 * 1024


class SaltApi:
    """salt-api as the way to the master (see the module's doc)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        unknown = sorted(set(map(str, settings)) - KEYS)
        if unknown:
            raise ConfigError(
                f"salt_api: unknown key {', '.join(unknown)} (it takes {', '.join(sorted(KEYS))})"
            )
        url = settings.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"salt_api: url must be salt-api's http(s) URL, not {url!r}")
        for key in ("username", "password"):
            if not isinstance(settings.get(key), str):
                raise ConfigError(f"salt_api: {key} is needed (the eauth credentials)")
        self.url = url
        self._credentials = {
            "username": settings["username"],
            "password": settings["password"],
            "eauth": str(settings.get("eauth") or "auto"),
        }
        self._timeout = float(settings.get("timeout") or DEFAULT_TIMEOUT)
        self._context: ssl.SSLContext | None = None
        if url.startswith("https://") and settings.get("verify") is False:
            # Asked for (a self-signed salt-api certificate): no verification.
            self._context = ssl.create_default_context()
            self._context.check_hostname = False
            self._context.verify_mode = ssl.CERT_NONE

    def describe(self) -> str:
        return f"salt-api at {self.url} (eauth {self._credentials['eauth']})"

    async def call(
        self, request: Mapping[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        op = request["op"]
        low: dict[str, Any] = {
            "fun": request.get("fun"),
            "arg": list(request.get("arg") or []),
            "kwarg": dict(request.get("kwarg") or {}),
            **self._credentials,
        }
        if op == "check":
            low.update(client="runner", fun="test.arg", arg=["saltbus check"], kwarg={})
        elif op == "local":
            low["client"] = "local_async"
            low.update(tgt=request["tgt"], tgt_type=request.get("tgt_type") or "glob")
            for key in ("ret", "timeout", "batch"):
                if request.get(key):
                    low[key] = request[key]
        elif op == "runner":
            low.update(client="runner", full_return=True)
        elif op == "wheel":
            low["client"] = "wheel"
        else:
            raise SaltUnreachableError(f"salt-api does not run {op} reactions")
        wait = max(self._timeout, timeout or 0.0)
        reply = await asyncio.to_thread(self._post, [low], wait)
        returned = reply.get("return") if isinstance(reply, Mapping) else None
        if not isinstance(returned, list) or not returned:
            return {"ok": False, "error": f"salt-api answered without a return: {reply!r:.200}"}
        value = returned[0]
        if isinstance(value, str) and "authenticate" in value.lower():
            # rest_tornado's /run says so with a 200, rest_cherrypy with a 401.
            raise self._refused(f"salt-api said {value!r}")
        if op == "check":
            return {"ok": True, "master": self.describe()}
        if op == "local":
            if not isinstance(value, Mapping) or not value.get("jid"):
                return {
                    "ok": False,
                    "error": f"the Salt master published no job for {request['fun']} on "
                    f"{request['tgt']!r}: no minion matched, or it was refused ({value!r:.200})",
                }
            minions = sorted(value.get("minions") or [])
            return {"ok": True, "success": bool(minions), "jid": value["jid"], "minions": minions}
        # A full return is Salt's ret event, {tag, data: {jid, return, success}}.
        data = value.get("data") if isinstance(value, Mapping) else None
        if isinstance(data, Mapping) and "return" in data:
            return {
                "ok": True,
                "success": bool(data.get("success", True)),
                "jid": data.get("jid"),
                "return": data.get("return"),
            }
        if isinstance(value, str) and value.startswith(("Timeout", "Exception occurred")):
            return {"ok": False, "error": f"salt-api: {value[:500]}"}
        return {"ok": True, "success": True, "return": value}

    def _post(self, lowstate: list[dict[str, Any]], timeout: float) -> Any:
        body = json.dumps(lowstate, default=str).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._context) as reply:
                return json.loads(reply.read(BODY_LIMIT))
        except urllib.error.HTTPError as exc:
            with exc:
                if exc.code == 401:
                    raise self._refused("HTTP 401") from None
                raise SaltUnreachableError(
                    f"salt-api at {self.url} answered HTTP {exc.code}: "
                    f"{exc.read(500).decode('utf-8', 'replace')!r}"
                ) from None
        except OSError as exc:
            raise SaltUnreachableError(
                f"cannot reach salt-api at {self.url}: {getattr(exc, 'reason', None) or exc}"
            ) from None
        except ValueError as exc:
            raise SaltUnreachableError(f"salt-api at {self.url} answered no JSON: {exc}") from None

    def _refused(self, how: str) -> SaltUnreachableError:
        return SaltUnreachableError(
            f"salt-api at {self.url} refused the credentials of "
            f"{self._credentials['username']!r} (eauth {self._credentials['eauth']}): {how}"
        )

    async def close(self) -> None:
        """Nothing is kept open between requests."""
