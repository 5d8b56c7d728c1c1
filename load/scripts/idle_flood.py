#!/usr/bin/env python3
"""One host opening many idle connections against a hub, and a good peer beside it.

Opens N TCP connections from one source address (default 127.0.0.2) to the hub's P2PPI
port and holds them idle (no ClientHello), in processes of at most 10,000 descriptors
each, while a good peer from another address (127.0.0.1) completes a mutual-TLS handshake
every 0.25 s. Prints how many of the host's connections the hub still holds (the others
were closed at accept: refused by admission) and the good peer's handshake times. Issue
22's figure: the good peer connects in < 1 s and the host is held to its limit
(limits.max_handshakes_per_ip while its connections sit in the handshake).

usage: idle_flood.py --ca CA.pem --cert PEER.pem --key PEER.key [--hub 127.0.0.1:7350] [-n 20000]
"""
import argparse
import os
import select
import socket
import ssl
import time

PER_PROCESS = 10_000


def hold(addr, source, n, settle, out):
    """Opens n idle connections from source, waits `settle` s, writes 'opened failed held'."""
    flood, failed = [], 0
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.bind((source, 0))
        try:
            s.connect(addr)
        except BlockingIOError:
            pass
        except OSError:
            failed += 1
            s.close()
            continue
        flood.append(s)
    time.sleep(settle)
    poll = select.poll()
    for s in flood:
        poll.register(s, select.POLLIN | select.POLLHUP | select.POLLERR)
    closed = 0
    by_fd = {s.fileno(): s for s in flood}
    for fd, _ in poll.poll(0):
        try:
            if by_fd[fd].recv(1) == b"":
                closed += 1
        except OSError:
            closed += 1
    os.write(out, f"{len(flood)} {failed} {len(flood) - closed}\n".encode())
    os._exit(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hub", default="127.0.0.1:7350")
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--from", dest="source", default="127.0.0.2")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds the host holds them")
    args = ap.parse_args()
    host, port = args.hub.rsplit(":", 1)
    addr = (host, int(port))

    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.check_hostname = False

    def good_peer():
        start = time.monotonic()
        with socket.create_connection(addr, timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                return time.monotonic() - start

    before = [good_peer() for _ in range(5)]
    read, write = os.pipe()
    children = []
    left = args.n
    start = time.monotonic()
    while left > 0:
        share = min(left, PER_PROCESS)
        left -= share
        pid = os.fork()
        if pid == 0:
            os.close(read)
            hold(addr, args.source, share, args.settle, write)
        children.append(pid)
    os.close(write)
    times = []
    while time.monotonic() - start < args.settle:
        times.append(good_peer())
        time.sleep(0.25)
    report = b""
    while True:
        chunk = os.read(read, 4096)
        if not chunk:
            break
        report += chunk
    for pid in children:
        os.waitpid(pid, 0)
    opened = failed = held = 0
    for line in report.decode().split("\n"):
        if line:
            o, f, h = map(int, line.split())
            opened, failed, held = opened + o, failed + f, held + h
    times.sort()
    ms = lambda t: f"{t * 1000:.1f} ms"
    print(f"good peer alone: median {ms(sorted(before)[2])}")
    print(f"host {args.source}: {opened} connections opened ({failed} failed at connect), "
          f"held by the hub after {args.settle:.0f} s: {held}, closed at accept: {opened - held}")
    print(f"good peer meanwhile: {len(times)} mutual-TLS handshakes, median {ms(times[len(times) // 2])}, "
          f"max {ms(times[-1])}")


if __name__ == "__main__":
    main()
