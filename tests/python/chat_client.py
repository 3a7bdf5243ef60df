#!/usr/bin/env python3
"""A TCP chat client in the course's Python, framed as SPEC.md says.

Tests drive it against the sockloop chat server to prove that the two speak
the same wire format. It sends each non-empty stdin line as one frame whose
payload is the chat message text ``[TIMESTAMP] NAME:\\n\\tTEXT``, and prints
the payload of every frame it receives, followed by a newline, on stdout.

Each frame is a big-endian unsigned length prefix (2 bytes, or 4 with
``--length-bytes 4``) and that many bytes of UTF-8 text; length 0 means
"I am closing". Unlike the reference ``Connection.receive``, frames are decoded
incrementally, so a frame split over several reads stays whole.

One thread, one ``selectors`` loop over stdin and the socket. At stdin EOF the
client sends the zero-length frame and keeps printing until the server closes
the connection. Exit codes: 0 when the server closed the connection (or said it
was closing), 1 on an error (reported on stderr), 2 on a usage error.

Usage: chat_client.py HOST PORT NAME [--length-bytes 2|4]
"""

import argparse
import datetime
import os
import selectors
import socket
import sys

READ_SIZE = 65536


def parse_args():
    parser = argparse.ArgumentParser(description="TCP chat client (length-prefixed frames)")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("name")
    parser.add_argument("--length-bytes", type=int, choices=(2, 4), default=2)
    return parser.parse_args()


def fail(message):
    print(f"chat_client: {message}", file=sys.stderr)
    sys.exit(1)


def chat_message(name, text):
    """The chat message text, as the course's programs write it."""
    return f"[{datetime.datetime.now().isoformat()}] {name}:\n\t{text}"


class FrameDecoder:
    """Turns received bytes, split anywhere, into frame payloads."""

    def __init__(self, length_bytes):
        self.length_bytes = length_bytes
        self.buffer = bytearray()

    def feed(self, data):
        """Returns the payloads completed by ``data``; ``None`` for a close frame."""
        self.buffer += data
        payloads = []
        start = 0
        while len(self.buffer) - start >= self.length_bytes:
            length = int.from_bytes(self.buffer[start:start + self.length_bytes], "big")
            if length == 0:
                payloads.append(None)
                break
            end = start + self.length_bytes + length
            if len(self.buffer) < end:
                break
            payloads.append(bytes(self.buffer[start + self.length_bytes:end]))
            start = end
        del self.buffer[:start]
        return payloads


def encode(payload, length_bytes):
    limit = (1 << (8 * length_bytes)) - 1
    if len(payload) > limit:
        raise ValueError(f"message of {len(payload)} bytes exceeds the {limit}-byte maximum")
    return len(payload).to_bytes(length_bytes, "big") + payload


def show(payload):
    """Prints one received payload, byte for byte, and a newline."""
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as error:
        fail(f"received a frame that is not utf-8: {error}")
    out = sys.stdout.buffer
    out.write(payload + b"\n")
    out.flush()


def run(args):
    try:
        sock = socket.create_connection((args.host, args.port))
    except OSError as error:
        reason = str(error.strerror or error)
        fail(f"cannot connect to {args.host}:{args.port}: {reason[:1].lower()}{reason[1:]}")
    sock.setblocking(False)

    # poll() accepts regular files (stdin redirected from a file); epoll does not.
    selector = getattr(selectors, "PollSelector", selectors.SelectSelector)()
    stdin_fd = sys.stdin.fileno()
    selector.register(stdin_fd, selectors.EVENT_READ, "stdin")
    selector.register(sock, selectors.EVENT_READ, "socket")

    decoder = FrameDecoder(args.length_bytes)
    pending_line = b""  # The start of a stdin line whose newline has not come yet.
    outgoing = bytearray()  # Frames not yet accepted by the socket.
    stdin_open = True
    shut_down = False  # Our write half is closed, after the close frame went out.

    def queue_line(line):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            return
        text = line.decode("utf-8", errors="replace")
        payload = chat_message(args.name, text).encode("utf-8")
        try:
            outgoing.extend(encode(payload, args.length_bytes))
        except ValueError as error:
            print(f"chat_client: not sent: {error}", file=sys.stderr)

    while True:
        # Ask to write only while there is something to write.
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if outgoing else 0)
        if selector.get_key(sock).events != wanted:
            selector.modify(sock, wanted, "socket")
        for key, mask in selector.select():
            if key.data == "stdin":
                data = os.read(stdin_fd, READ_SIZE)
                if data:
                    lines = (pending_line + data).split(b"\n")
                    pending_line = lines.pop()
                    for line in lines:
                        queue_line(line)
                else:
                    queue_line(pending_line)
                    pending_line = b""
                    outgoing.extend(bytes(args.length_bytes))
                    selector.unregister(stdin_fd)
                    stdin_open = False
                continue

            if mask & selectors.EVENT_WRITE and outgoing:
                try:
                    sent = sock.send(outgoing)
                except BlockingIOError:
                    sent = 0
                except (BrokenPipeError, ConnectionResetError):
                    return 0  # The server closed first.
                del outgoing[:sent]
            if mask & selectors.EVENT_READ:
                try:
                    data = sock.recv(READ_SIZE)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    return 0  # The server closed first.
                if not data:
                    return 0  # The server closed the connection.
                for payload in decoder.feed(data):
                    if payload is None:
                        return 0  # The server said it is closing.
                    show(payload)

        if not stdin_open and not outgoing and not shut_down:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                return 0
            shut_down = True


def main():
    args = parse_args()
    try:
        code = run(args)
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # Whoever read our stdout has gone; nothing left to show. Point stdout
        # at /dev/null so the flush at exit does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except OSError as error:
        fail(str(error))
    sys.exit(code)


if __name__ == "__main__":
    main()
