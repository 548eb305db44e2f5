"""pixelfleet.net: the one free-port and wait-for-port helper."""

from __future__ import annotations

import asyncio
import socket

import pytest

from pixelfleet.net import NotListening, free_port, wait_for_port


def test_free_port_can_be_bound_for_tcp_and_with_udp_for_both() -> None:
    with socket.socket() as tcp:
        tcp.bind(("127.0.0.1", free_port()))
    port = free_port(udp=True)
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", port))
        udp.bind(("127.0.0.1", port))


async def test_wait_for_port_returns_once_a_server_listens() -> None:
    port = free_port()

    async def listen_later() -> asyncio.Server:
        await asyncio.sleep(0.2)
        return await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)

    later = asyncio.create_task(listen_later())
    await wait_for_port("127.0.0.1", port, 10.0)
    server = await later
    server.close()
    await server.wait_closed()


async def test_wait_for_port_gives_up_after_the_timeout_or_when_the_process_exited() -> None:
    port = free_port()
    with pytest.raises(NotListening, match="after 0.2 s"):
        await wait_for_port("127.0.0.1", port, 0.2)
    with pytest.raises(NotListening, match="exited"):
        await asyncio.wait_for(wait_for_port("127.0.0.1", port, 60.0, exited=lambda: True), 5)
