"""Carrying a fault out on the server side of a WebSocket: what the client then observes.

Shared by the fake server and the proxy, so a policy ends a connection the same way in both:
an abort or reset shows as 1006 with no close frame, a close as its code, and a half-open or
delayed close goes silent first and acts later.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

from aiohttp import web

from harness.core.faults import Fault, FaultKind

__all__ = ["FaultCarrier"]


class FaultCarrier:
    """Carries out faults; keeps the tasks that hold silent sockets, so `stop` can end them."""

    def __init__(self, sleep: Callable[[float], Awaitable[None]]) -> None:
        self._sleep = sleep  # scenario seconds, on the run clock
        self._held: set[asyncio.Task] = set()

    async def carry_out(
        self, transport: asyncio.Transport | None, ws: web.WebSocketResponse, fault: Fault
    ) -> asyncio.Task | None:
        """End (or trouble) the connection as `fault` says. Returns the task that holds a
        half-open or delayed-close socket: the caller must send nothing more meanwhile."""
        kind = fault.kind
        if kind is FaultKind.ERROR:
            return None
        if kind is FaultKind.ABORT:
            if transport is not None:
                transport.abort()
        elif kind is FaultKind.RESET:
            if transport is not None:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
        elif kind is FaultKind.CLOSE:
            await ws.close(code=fault.code or 1000, message=fault.reason.encode()[:123])
        else:  # HALF_OPEN or DELAYED_CLOSE: go silent now, act later
            if transport is not None:
                transport.pause_reading()
            hold = asyncio.get_running_loop().create_task(self._later(transport, ws, fault))
            self._held.add(hold)
            hold.add_done_callback(self._held.discard)
            return hold
        return None

    async def _later(
        self, transport: asyncio.Transport | None, ws: web.WebSocketResponse, fault: Fault
    ) -> None:
        if fault.kind is FaultKind.HALF_OPEN:
            try:
                await self._sleep(fault.hold)
            finally:
                if transport is not None:
                    transport.abort()
            return
        try:
            await self._sleep(fault.delay)
        except asyncio.CancelledError:
            if transport is not None:
                transport.abort()
            raise
        if transport is not None and not transport.is_closing():
            transport.resume_reading()
        await ws.close(code=fault.code or 1000, message=fault.reason.encode()[:123])

    def cancel_held(self) -> None:
        """Held sockets end with the server, not their hold."""
        for task in list(self._held):
            task.cancel()
