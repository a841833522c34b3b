"""Inspecting a bus this process did not start: who owns it, can we reach it,
and which Salt generation's framing it speaks.

The framing question cannot be answered by asking: Salt's publisher says
nothing when a listener connects. So the probe fires a marked event in each
framing and watches which ones come back on the publish socket, and in which
framing.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from saltbus.client.sockets import connect
from saltbus.config import Address, Config
from saltbus.errors import SaltbusError
from saltbus.wire import FrameDecoder, Framing, encode_frame, pack_body, unpack_body

PROBE_TAG: Final = "saltbus/doctor/probe"


@dataclass(frozen=True, slots=True)
class SocketReport:
    address: str
    exists: bool
    mode: int | None = None
    owner: str | None = None
    group: str | None = None
    accessible: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ProbeReport:
    pub: SocketReport
    pull: SocketReport
    publisher_live: bool
    publisher_kind: str | None = None  # "saltbus" or "salt"
    pull_accepts: tuple[Framing, ...] = ()
    pub_framing: Framing | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def generation(self) -> str | None:
        """The salt_version setting that matches what was seen, when it is known."""
        if self.pub_framing is None or not self.pull_accepts:
            return None
        if self.publisher_kind == "saltbus":
            # saltbus accepts both pull framings; only its publishing tells.
            return "3006" if self.pub_framing is Framing.LENGTH_PREFIXED else "3007"
        if self.pub_framing is Framing.LENGTH_PREFIXED:
            return "3006"
        return "3008" if self.pull_accepts == (Framing.LENGTH_PREFIXED,) else "3007"


def inspect_socket(address: Address) -> SocketReport:
    if isinstance(address, tuple):
        label = f"{address[0]}:{address[1]}"
        return SocketReport(label, exists=True, accessible=_can_connect(address) is None)
    label = os.fspath(address)
    try:
        info = address.lstat()
    except FileNotFoundError:
        return SocketReport(label, exists=False, error="no such socket")
    except PermissionError:
        return SocketReport(
            label, exists=False, error=f"cannot look into {address.parent}: permission denied"
        )
    error = _can_connect(address)
    return SocketReport(
        label,
        exists=True,
        mode=stat.S_IMODE(info.st_mode),
        owner=_user_name(info.st_uid),
        group=_group_name(info.st_gid),
        accessible=error is None,
        error=error,
    )


def probe_bus(config: Config, timeout: float = 1.0, fire: bool = True) -> ProbeReport:
    """Report on the bus ``config`` points at. With ``fire``, send one marked
    probe event in each framing to learn which the publisher takes and sends."""
    pub, pull = inspect_socket(config.pub_address), inspect_socket(config.pull_address)
    live = pub.accessible and pull.accessible
    if not (fire and live):
        return ProbeReport(pub, pull, live)
    notes: list[str] = []
    accepted: list[Framing] = []
    pub_framing: Framing | None = None
    kind: str | None = None
    listener = connect(config.pub_address, timeout)
    try:
        decoder = FrameDecoder(max_frame_size=config.max_frame_size)
        time.sleep(0.05)  # let the publisher register the listener before we fire
        for framing in (Framing.BARE, Framing.LENGTH_PREFIXED):
            token = secrets.token_hex(8)
            _fire_raw(config, framing, token, timeout)
            seen = _wait_for(listener, decoder, token, timeout)
            if seen is not None:
                accepted.append(framing)
                pub_framing = decoder.framing
                kind = "saltbus" if "seq" in seen else "salt"
    except (OSError, SaltbusError) as exc:
        notes.append(f"probe failed: {exc}")
    finally:
        listener.close()
    if not accepted:
        notes.append(
            "no probe event came back: the publisher dropped both framings, or it does not "
            "forward events to this listener"
        )
    return ProbeReport(pub, pull, live, kind, tuple(accepted), pub_framing, notes)


def _fire_raw(config: Config, framing: Framing, token: str, timeout: float) -> None:
    body = pack_body(PROBE_TAG, {"token": token, "framing": framing.value})
    sock = connect(config.pull_address, timeout)
    try:
        sock.settimeout(timeout)
        sock.sendall(encode_frame(body, framing=framing))
    finally:
        # A Salt publisher reading the wrong framing may wait for more bytes; closing
        # ends that connection without affecting others.
        sock.close()


def _wait_for(
    sock: socket.socket, decoder: FrameDecoder, token: str, timeout: float
) -> dict[str, object] | None:
    """The head of the probe frame carrying ``token``, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return None
        if not data:
            return None
        decoder.receive_data(data)
        for frame in decoder:
            tag, payload = unpack_body(frame.body)
            if tag == PROBE_TAG and payload.get("token") == token:
                return dict(frame.head)
    return None


def _can_connect(address: Address) -> str | None:
    try:
        connect(address, 0.0).close()
    except SaltbusError as exc:
        return str(exc)
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def minion_buses(sock_dir: Path) -> list[str]:
    """The minion socket prefixes present in ``sock_dir`` (their ids are hashed)."""
    try:
        return sorted(p.name[: -len("_pub.ipc")] for p in sock_dir.glob("minion_event_*_pub.ipc"))
    except OSError:
        return []
