"""The receive buffer of the sensor's kernel sockets (packet capture, netlink listeners).

A burst (a flood of packets, a storm of socket-destroy or conntrack notifications)
must not overflow a queue the sensor reads only when its loop wakes, so those sockets
ask for a buffer past net.core.rmem_max with SO_RCVBUFFORCE, which needs
CAP_NET_ADMIN. Without that capability the agent still runs: SO_RCVBUF asks for the
same size and the kernel caps it at rmem_max. One function, so capture and netlink
sockets cannot drift apart in how they ask.
"""

from __future__ import annotations

import socket

SO_RCVBUFFORCE = 33  # Linux; the socket module does not name it


def set_receive_buffer(sock: socket.socket, buffer_bytes: int) -> None:
    """Ask for `buffer_bytes` of receive buffer: past net.core.rmem_max with
    CAP_NET_ADMIN, else capped at it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buffer_bytes)
    except PermissionError:  # without CAP_NET_ADMIN: capped at net.core.rmem_max
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
