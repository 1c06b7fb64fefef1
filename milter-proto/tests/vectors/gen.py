#!/usr/bin/env python3
"""Writes the binary milter vectors in this directory, independently of the Rust encoder.

Each exchange is a pair: NAME.mta.bin (frames the MTA sends, SMFIC_*) and NAME.milter.bin
(frames the filter sends, SMFIR_*); single files show one direction or one error. The
expected decodes are NAME.*.txt, written by `MILTER_REGEN_VECTORS=1 cargo test -p milter-proto
--test vectors`. Run: `python3 gen.py` in this directory (only needed to add vectors).
Frame: 4-byte big-endian length (command byte + payload), command byte, payload; strings are
NUL-terminated (docs/spec, /work/shared/reference/milter-protocol.md).
"""
import struct


def frame(cmd, payload=b""):
    return struct.pack(">I", len(payload) + 1) + cmd + payload


def z(*strs):
    return b"".join(s + b"\0" for s in strs)


def u32(*ws):
    return b"".join(struct.pack(">I", w) for w in ws)


def macro(stage, *pairs):
    return frame(b"D", stage + b"".join(z(n, v) for n, v in pairs))


def connect_inet(host, port, addr, fam=b"4"):
    return frame(b"C", z(host) + fam + struct.pack(">H", port) + z(addr))


HEADERS = [
    (b"From", b"Alice <alice@example.org>"),
    (b"To", b"bob@example.net"),
    (b"Subject", b"vectors\n\tfolded"),
    (b"Message-ID", b"<1@example.org>"),
]
BODY = b"Hello Bob,\r\n\r\nthe vectors are in.\r\n"

# Postfix 3.x, milter_protocol = 6: offers every action (0x1FF) and option up to HDR_LEADSPC
# (0x1FFFFF); sends the default milter_*_macros before each stage, header values without
# their leading space, the body in chunks, an empty BODYEOB, then QUIT.
postfix = [
    frame(b"O", u32(6, 0x1FF, 0x1FFFFF)),
    macro(b"C", (b"j", b"mx.example.net"), (b"{daemon_name}", b"smtpd"),
          (b"{daemon_addr}", b"192.0.2.25"), (b"v", b"Postfix 3.7.11"), (b"_", b"client.example.org [192.0.2.1]")),
    connect_inet(b"client.example.org", 40000, b"192.0.2.1"),
    macro(b"H"),
    frame(b"H", z(b"client.example.org")),
    macro(b"M", (b"i", b"4ABCDEF"), (b"{auth_authen}", b""), (b"{mail_addr}", b"alice@example.org"),
          (b"{mail_host}", b"example.org"), (b"{mail_mailer}", b"smtp")),
    frame(b"M", z(b"<alice@example.org>", b"SIZE=1234", b"BODY=8BITMIME")),
    macro(b"R", (b"{rcpt_addr}", b"bob@example.net"), (b"{rcpt_host}", b"example.net"),
          (b"{rcpt_mailer}", b"local")),
    frame(b"R", z(b"<bob@example.net>", b"NOTIFY=NEVER")),
    macro(b"T", (b"i", b"4ABCDEF")),
    frame(b"T"),
] + [frame(b"L", z(n, v)) for n, v in HEADERS] + [
    macro(b"N", (b"i", b"4ABCDEF")),
    frame(b"N"),
    frame(b"B", BODY),
    macro(b"E", (b"i", b"4ABCDEF")),
    frame(b"E"),
    frame(b"A"),
    frame(b"Q"),
]
# The filter asks for ADDHDRS|ADDRCPT|CHGBODY and the i macro at end of message (SETSYMLIST).
postfix_milter = [
    frame(b"O", u32(6, 0x1 | 0x4 | 0x2, 0) + u32(5) + z(b"i")),
] + [frame(b"c")] * (2 + 2 + 1 + len(HEADERS) + 1 + 1) + [
    frame(b"h", z(b"X-Scanned", b"yes")),
    frame(b"+", z(b"<archive@example.net>")),
    frame(b"b", b"Replaced.\r\n"),
    frame(b"a"),
]

# A version 2 MTA (sendmail 8.13 era): v2 masks, IPv6 client, no DATA event, no macros.
v2 = [
    frame(b"O", u32(2, 0x3F, 0x7F)),
    connect_inet(b"v6.example.org", 2525, b"2001:db8::1", b"6"),
    frame(b"H", z(b"v6.example.org")),
    frame(b"M", z(b"<a@example.org>")),
    frame(b"R", z(b"<b@example.net>")),
    frame(b"L", z(b"Subject", b"old peer")),
    frame(b"N"),
    frame(b"B", b"x\r\n"),
    frame(b"E"),
    frame(b"Q"),
]
v2_milter = [
    frame(b"O", u32(2, 0x1 | 0x10, 0)),  # ADDHDRS|CHGHDRS
    frame(b"c"), frame(b"c"),  # connect, helo
    frame(b"c"), frame(b"c"),  # mail, rcpt
    frame(b"c"), frame(b"c"), frame(b"c"),  # header, eoh, body
    frame(b"m", u32(1) + z(b"Subject", b"")),
    frame(b"a"),
]

# NR negotiation: the filter takes every NR_* option Postfix offers, so it answers only the end
# of message; a unix-socket client (family L) and an UNKNOWN command.
nr = [
    frame(b"O", u32(6, 0x1FF, 0x1FFFFF)),
    frame(b"C", z(b"localhost") + b"L" + struct.pack(">H", 0) + z(b"/var/run/local.sock")),
    frame(b"H", z(b"localhost")),
    frame(b"U", z(b"XCLIENT NAME=x")),
    frame(b"M", z(b"<a@example.org>")),
    frame(b"R", z(b"<b@example.net>")),
    frame(b"T"),
    frame(b"L", z(b"Subject", b"no replies")),
    frame(b"N"),
    frame(b"B", b"x\r\n"),
    frame(b"E"),
    frame(b"K"),
    frame(b"C", z(b"[192.0.2.9]") + b"U"),
    frame(b"Q"),
]
NR_ALL = 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000 | 0x80 | 0x40000 | 0x80000
nr_milter = [
    frame(b"O", u32(6, 0x1, NR_ALL)),
    frame(b"h", z(b"X-NR", b"1")),
    frame(b"c"),
]

# Every reply a filter can send: each end-of-message modification, then each decision.
every = [
    frame(b"h", z(b"X-Added", b"value")),
    frame(b"i", u32(0) + z(b"X-First", b"top")),
    frame(b"m", u32(2) + z(b"Received", b"")),
    frame(b"+", z(b"<new@example.net>")),
    frame(b"2", z(b"<par@example.net>", b"NOTIFY=NEVER")),
    frame(b"-", z(b"<old@example.net>")),
    frame(b"e", z(b"<bounce@example.org>", b"SIZE=10")),
    frame(b"e", z(b"<>")),
    frame(b"b", b"first chunk\r\n"),
    frame(b"b", b"second chunk\r\n"),
    frame(b"q", z(b"held for review")),
    frame(b"l", u32(2) + z(b"i {mail_addr}")),
    frame(b"p"),
    frame(b"s"),
    frame(b"c"), frame(b"a"), frame(b"r"), frame(b"t"), frame(b"d"),
    frame(b"y", z(b"550 5.7.1 Command rejected")),
    frame(b"f"), frame(b"4"),
]

FILES = {
    "postfix-v6-session.mta.bin": postfix,
    "postfix-v6-session.milter.bin": postfix_milter,
    "v2-peer.mta.bin": v2,
    "v2-peer.milter.bin": v2_milter,
    "nr-negotiation.mta.bin": nr,
    "nr-negotiation.milter.bin": nr_milter,
    "every-reply.milter.bin": every,
    # Errors: each ends where decoding must stop.
    "invalid-length-zero.mta.bin": [frame(b"O", u32(6, 0x1FF, 0x1FFFFF)), b"\0\0\0\0"],
    "invalid-too-long.mta.bin": [frame(b"O", u32(6, 0x1FF, 0x1FFFFF)), b"UNKNOWN command\r\n"],
    "truncated-header.mta.bin": [frame(b"O", u32(6, 0x1FF, 0x1FFFFF)), frame(b"L", z(b"Subject", b"cut"))[:-3]],
    "unknown-command.mta.bin": [frame(b"O", u32(6, 0x1FF, 0x1FFFFF)), frame(b"Z", b"??")],
    "trailing-data.mta.bin": [frame(b"N", b"extra")],
}

for name, frames in FILES.items():
    with open(name, "wb") as f:
        f.write(b"".join(frames))
