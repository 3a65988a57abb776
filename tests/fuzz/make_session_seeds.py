#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_xfer_session (tests/fuzz/corpus/xfer_session):
one input per attack of docs/transfer.md's threat model, in the input format
fuzz_xfer_session.c decodes. Run from anywhere; rewrites the folder."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "xfer_session")

# region selectors (pick_region): the read-write, read-only, no-rights and
# pool regions, an id nobody registered, a raw id from the input
RW, RO, NONE, POOL, UNKNOWN = 0, 1, 2, 3, 4
WRITE, READ_REQ, READ_RESP, ACK, MSG, MSG_REPLY = 1, 2, 3, 4, 5, 6
HELLO_BYTES = 16 + 16 + 32 + 64


def session(ops, silent=0, name=b"fuzz"):
    """A proper handshake, then ops."""
    return bytes([silent << 1, len(name)]) + name + b"".join(ops)


def small(v):
    return b"\x00" + struct.pack("<H", v)


def raw64(v):
    return b"\x80" + struct.pack("<Q", v)


def frame(type_, region, offset, length, payload=b"", tag=1, status=None):
    """Operation 0: a sealed frame; offset/length already encoded."""
    st = b"\x00" if status is None else b"\xff" + struct.pack("<i", status)
    return (b"\x00" + bytes([type_, region]) + offset + length + st +
            struct.pack("<H", tag) + payload)


def msg(kind, payload, pool_id=True, tag=7):
    return (b"\x04" + bytes([kind]) + struct.pack("<H", len(payload)) +
            bytes([1 if pool_id else 0]) + struct.pack("<H", tag) + payload)


def read_replies(ms=10):
    return b"\x05" + bytes([ms])


def half_write(cut, length, payload):
    return (b"\x06" + struct.pack("<I", cut) + bytes([WRITE, RW]) + small(0) +
            small(length) + b"\x00" + struct.pack("<H", 3) + payload)


def tampered_write():
    payload = b"INJECTED-BY-MITM"
    head = bytes([WRITE, RW]) + small(64) + small(len(payload)) + b"\x00" + struct.pack("<H", 9)
    return b"\x02" + head + payload + struct.pack("<I", 40 * 8 + 3)


SEEDS = {
    # seven silent sockets held while a legitimate session runs
    "idle": session([read_replies()], silent=7),
    # a HELLO frame, one byte per write, never finished
    "slowloris": b"\x01\x01" + b"".join(
        b"\x00" + bytes([c]) for c in struct.pack("<IHHI", 0x4353564B, 1, 0, HELLO_BYTES) + bytes(40)),
    # a HELLO with other version, backend, an extra socket of no session
    "hello_fields": b"\x01\x00" + b"\x01" + struct.pack("<I", 1) + b"\x01" + struct.pack("<I", 9) +
                    b"\x01" + struct.pack("<I", 3) + b"\x00" + bytes(16) + b"\x05\x1b[31m",
    # a HELLO choosing the AES suite (MAC mode): the agent's threads key
    # OpenSSL's AES-GCM for the socket, and the first frame (sealed with
    # CHACHA, as every frame of the harness) fails its tag there
    "hello_suite_aes": b"\x01\x00" + b"\x00\x00\x00" + b"\x01" + struct.pack("<I", 0x100) +
                       bytes(16) + b"\x03aes" +
                       frame(WRITE, RW, small(0), small(16), b"A" * 16) + read_replies(),
    "notify_flood": session([b"\x07\xc7", b"\x07\xc7", read_replies(19)]),
    "half_write": session([half_write(40 + 100, 4096, b"\x41" * 200)]),
    # KV HASHES of the pool's blocks 1..3 and a VERIFY with a wrong checksum
    "kv_hashes": session([msg(3, struct.pack("<II", 0, 3) + struct.pack("<III", 1, 2, 3)),
                          read_replies()]),
    "kv_verify": session([msg(2, struct.pack("<IIII", 0, 1, 1, 0) +
                              struct.pack("<IIQ", 1, 0, 0xdeadbeef)), read_replies()]),
    "kv_hashes_bad": session([msg(3, struct.pack("<II", 0, 2) + struct.pack("<II", 0, 99)),
                              msg(3, struct.pack("<II", 0, 0)), read_replies()]),
    "mitm_tampered": session([tampered_write(), read_replies()]),
    "bad_rights": session([frame(WRITE, RO, small(0), small(16), b"X" * 16),
                           frame(WRITE, NONE, small(0), small(16), b"Y" * 16, tag=2),
                           frame(READ_REQ, NONE, small(0), small(16), tag=3),
                           read_replies()]),
    "out_of_bounds": session([frame(WRITE, RW, small(8190), small(100), b"Z" * 100),
                              frame(READ_REQ, RW, raw64(2**64 - 8), small(16), tag=2),
                              frame(WRITE, RO, raw64(2**64 - 4), small(8), b"W" * 8, tag=3),
                              frame(READ_REQ, UNKNOWN, small(0), small(8), tag=4),
                              read_replies()]),
    "write_read": session([frame(WRITE, RW, small(128), small(512), bytes(range(256)) * 2),
                           frame(READ_REQ, RW, small(0), small(4096), tag=2),
                           frame(WRITE, POOL, small(0), small(64), b"P" * 64, tag=3),
                           read_replies(19)]),
    "answers_to_nothing": session([frame(ACK, RW, small(0), small(0), tag=5),
                                   frame(READ_RESP, RW, small(0), small(8), b"R" * 8, tag=6),
                                   frame(MSG_REPLY, RW, small(0), small(8), b"M" * 8, tag=7)]),
    "garbage": session([b"\x03\x20" + b"\xff" * 32]),
    "raw_header": session([b"\x01" + struct.pack("<IBBHIiQQQ", 0x3158564B, WRITE, 1, 0, 0, 0, 1, 0,
                                                 8) + struct.pack("<H", 8) + b"F" * 8]),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.unlink(os.path.join(OUT, f))
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
