"""SNI from a QUIC v1 client Initial packet (RFC 9000/9001), for HTTP/3 uploads.

A client Initial is encrypted, but with keys anyone can derive from its Destination
Connection ID (RFC 9001 §5.2): HKDF with a published salt gives the key, IV and
header-protection key; removing header protection (AES-ECB mask) reveals the packet
number; AES-128-GCM opens the payload, whose CRYPTO frames carry the TLS ClientHello.
`quic_sni(datagram)` returns its server name or None, never raises on hostile input.
Only the first Initial of a connection is read (the capture filter passes Initials);
a ClientHello split over two Initials is named only if SNI lies in the first part.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from agent.sensors.network.names import tls_sni

INITIAL_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
QUIC_V1 = 1


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-Label (RFC 8446 §7.1) with SHA-256 and an empty context."""
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def client_initial_keys(dcid: bytes) -> tuple[bytes, bytes, bytes]:
    """(key, iv, header-protection key) of the client's Initial packets."""
    initial = hmac.new(INITIAL_SALT_V1, dcid, hashlib.sha256).digest()
    secret = _expand_label(initial, b"client in", 32)
    return (
        _expand_label(secret, b"quic key", 16),
        _expand_label(secret, b"quic iv", 12),
        _expand_label(secret, b"quic hp", 16),
    )


def _varint(data: bytes, p: int) -> tuple[int, int]:
    """A QUIC variable-length integer at p: (value, offset after); (-1, -1) if cut."""
    if p >= len(data):
        return -1, -1
    n = 1 << (data[p] >> 6)
    if p + n > len(data):
        return -1, -1
    value = data[p] & 0x3F
    for b in data[p + 1 : p + n]:
        value = (value << 8) | b
    return value, p + n


def _decrypt(data: bytes) -> bytes | None:
    """The plaintext payload of a client Initial, or None."""
    if len(data) < 7 or data[0] & 0xF0 != 0xC0:  # long header, fixed bit, type Initial
        return None
    if int.from_bytes(data[1:5], "big") != QUIC_V1:
        return None
    p = 5
    dcid_len = data[p]
    if dcid_len > 20 or p + 1 + dcid_len >= len(data):
        return None
    dcid = data[p + 1 : p + 1 + dcid_len]
    p += 1 + dcid_len
    if p >= len(data):
        return None
    p += 1 + data[p]  # source connection id
    token_len, p = _varint(data, p)
    if p < 0:
        return None
    p += token_len
    length, pn_offset = _varint(data, p)
    if pn_offset < 0 or pn_offset + 20 > len(data) or length < 20:
        return None
    end = min(len(data), pn_offset + length)
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, iv, hp = client_initial_keys(dcid)
    sample = data[pn_offset + 4 : pn_offset + 20]
    encryptor = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = encryptor.update(sample) + encryptor.finalize()
    first = data[0] ^ (mask[0] & 0x0F)
    pn_len = (first & 0x03) + 1
    pn_bytes = bytes(b ^ m for b, m in zip(data[pn_offset : pn_offset + pn_len], mask[1:]))
    header = bytes([first]) + data[1:pn_offset] + pn_bytes
    nonce = (int.from_bytes(iv, "big") ^ int.from_bytes(pn_bytes, "big")).to_bytes(12, "big")
    try:
        return AESGCM(key).decrypt(nonce, data[pn_offset + pn_len : end], header)
    except Exception:  # InvalidTag, or a length the cipher refuses: not a real Initial
        return None


def _crypto_stream(plain: bytes) -> bytes:
    """The CRYPTO frame data from offset 0 on, as far as it is contiguous."""
    chunks: dict[int, bytes] = {}
    p = 0
    while p < len(plain):
        ftype = plain[p]
        if ftype in (0x00, 0x01):  # PADDING, PING
            p += 1
        elif ftype == 0x06:  # CRYPTO
            offset, p = _varint(plain, p + 1)
            length, p = _varint(plain, p) if p >= 0 else (-1, -1)
            if p < 0 or p + length > len(plain):
                break
            chunks[offset] = plain[p : p + length]
            p += length
        else:  # ACK or anything else: what came before is all we use
            break
    stream = b""
    while len(stream) in chunks and len(stream) < 1 << 16:
        stream += chunks.pop(len(stream))
    return stream


def quic_sni(data: bytes) -> str | None:
    """The server name in a QUIC v1 client Initial datagram, or None."""
    plain = _decrypt(data)
    if not plain:
        return None
    hello = _crypto_stream(plain)
    if len(hello) < 4 or hello[0] != 0x01:  # a ClientHello handshake message
        return None
    # give the TLS parser the record header it expects in front of the handshake
    return tls_sni(b"\x16\x03\x01" + struct.pack("!H", len(hello)) + hello)
