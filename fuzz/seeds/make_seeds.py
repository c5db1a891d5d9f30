#!/usr/bin/env python3
"""Writes the seed corpora in this folder (run from anywhere; output is deterministic).

parse_command/: one message per command, payload spellings from the parser's unit tests.
frames_and_handshake/: 3 flag bytes (see Flags::read in the target), then masked client
frames; the `head-*` seeds set the HTTP-head flag and start with an upgrade request (used
only when the target is built with the `http-head` feature).
core_sequence/ needs no seeds: any bytes decode to an operation sequence.
"""
import hashlib
import hmac
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    folder = os.path.join(HERE, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


PARSE = {
    "register": b'{"cmd":"sId","sId":"alice"}',
    "register-number": b'{"cmd":" sId ","sId":4.2e1}',
    "register-escaped": b'{"cmd":"sId","sId":"\\u0041\\n\\u3000"}',
    "session": b'{"cmd":"session","opponentId":"bob"}',
    "call": b'{"x":[{}],"cmd":"call","offer":{"sdp" : "v=0\\r\\n\\u00e9", "type":"offer"} ,'
    b'"sessionId":"0123456789abcdef","extra":{"offer":1}}',
    "accept": b'{"cmd":"accept","sessionId":"0123456789abcdef","answer":[1, [2, {"a":"]}"}], 3]}',
    "ice": b'{"cmd":"icecandidate","sessionId":"s","icecandidate":null}',
    "ice-number": b'{"cmd":"icecandidate","sessionId":"s","icecandidate":1.50e2 }',
    "ice-string": b'{"cmd":"icecandidate","sessionId":"s","icecandidate":"\\"},{\\""}',
    "reject": b'{"cmd":"reject","sessionId":" s ","offer":1}',
    "stop": b'{"cmd":"stop","sessionId":"s"}',
    "notify": b'{"data":{"k":[1]},"cmd":"notify","opponentId":7,"type":"ring"}',
    "duplicates": b'{"cmd":"sId","sId":"x","sId":"y","cmd":"notify","opponentId":"b","type":"t"}',
    "bad-shape": b'[{"cmd":"sId"}]',
}
for name, data in PARSE.items():
    write("parse_command", name, data)


def frame(opcode, payload, fin=True, mask=b"\x37\xfa\x21\x3d", masked=True):
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


TEXT = b'{"cmd":"sId","sId":"alice"}'
FRAMES = {
    "text": frame(1, TEXT),
    "binary": frame(2, b"\x00\x01\x02"),
    "ping-close": frame(9, b"hi") + frame(8, b"\x03\xe8bye"),
    "fragmented": frame(1, TEXT[:5], fin=False) + frame(9, b"") + frame(0, TEXT[5:]),
    "many": b"".join(frame(1, b"x" * i) for i in range(40)),
    "medium": frame(2, b"m" * 300),
    "unmasked": frame(1, TEXT, masked=False),
    "huge-claim": b"\x82\xff" + struct.pack(">Q", 1 << 62) + b"\x00\x00\x00\x00abc",
    "at-limit-claim": b"\x82\xff" + struct.pack(">Q", 65536) + b"\x00\x00\x00\x00abc",
    "bad-utf8": frame(1, b"\xc3\x28"),
    "close-empty": frame(8, b""),
}
for index, (name, data) in enumerate(FRAMES.items()):
    flags = bytes([index * 37 % 256 & ~4 & 0xFF, index * 11 % 256, index * 5 % 256])
    write("frames_and_handshake", name, flags + data)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(target=b"/", extra=b""):
    return (b"GET " + target + b" HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
            b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: " + KEY + b"\r\n" + extra + b"\r\n")


def token(secret, sid, expires):
    signed = f"{expires}.{sid.encode().hex()}"
    tag = hmac.new(secret, signed.encode(), hashlib.sha256).hexdigest()
    return f"{signed}.{tag}".encode()


TOKEN = token(b"fuzzing secret", "alice", 2_000_000)
HEADS = {
    # policy (third byte >> 3): bit 0 origins, bit 1 auth, bit 2 echo path
    "head-open": (0, upgrade() + frame(1, TEXT)),
    "head-origin": (1, upgrade(extra=b"Origin: https://app.example/\r\n") + frame(1, TEXT)),
    "head-auth": (2, upgrade(b"/?x=1&token=" + TOKEN) + frame(1, TEXT)),
    "head-echo": (6, upgrade(b"/echo") + frame(2, b"e" * 200)),
    "head-page": (0, b"GET /metrics?x HTTP/1.1\r\nAccept: text/plain\r\n\r\n"),
    "head-bad": (0, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
}
for name, (policy, data) in HEADS.items():
    write("frames_and_handshake", name, bytes([4 | 1, 255, policy << 3]) + data)
