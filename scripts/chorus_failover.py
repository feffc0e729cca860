#!/usr/bin/env python3
"""Measures one Chorus failover, for scripts/bench-replication.sh.

Finds the leader of a running group (INFO replication, `chorus_role:leader`), writes to it
continuously (one SET at a time) for --before seconds, then kills the leader's process with
SIGKILL and keeps writing: each attempt goes to a surviving node, follows one MOVED redirect,
and on a refused connection, an error reply or no reply within --attempt-timeout moves on to
the next survivor. Prints one JSON object: `failover_ms` is the time from the kill to the first
acknowledged SET; `gap_ms` from the last acknowledged SET before the kill to that one.

Standard library only.
"""

import argparse
import json
import os
import signal
import socket
import sys
import time

HOST = "127.0.0.1"


class Resp:
    """One RESP connection with a minimal reply reader (status, error, integer, bulk)."""

    def __init__(self, port: int, timeout: float):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def call(self, *args) -> tuple:
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            arg = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
        self.sock.sendall(b"".join(parts))
        line = self._line()
        kind, rest = line[:1], line[1:].decode(errors="replace")
        if kind == b"$":
            length = int(rest)
            if length < 0:
                return ("null", None)
            while len(self.buf) < length + 2:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                self.buf += data
            body, self.buf = self.buf[:length], self.buf[length + 2 :]
            return ("bulk", body.decode(errors="replace"))
        return ({b"+": "status", b"-": "error", b":": "int"}.get(kind, "other"), rest)


def role(port: int) -> str:
    conn = Resp(port, 1.0)
    try:
        _, text = conn.call("INFO", "replication")
    finally:
        conn.close()
    for line in (text or "").splitlines():
        if line.startswith("chorus_role:"):
            return line.split(":", 1)[1].strip()
    return ""


def find_leader(ports, wait: float) -> int:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        for port in ports:
            try:
                if role(port) == "leader":
                    return port
            except (OSError, ConnectionError, ValueError):
                pass
        time.sleep(0.05)
    raise SystemExit(f"chorus_failover.py: no leader among ports {ports} within {wait} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ports", required=True, help="client ports, comma-separated")
    parser.add_argument("--pids", required=True, help="the nodes' pids, in the order of --ports")
    parser.add_argument("--before", type=float, default=1.0, help="seconds of writes before the kill")
    parser.add_argument("--attempt-timeout", type=float, default=0.5)
    parser.add_argument("--give-up", type=float, default=30.0, help="seconds after the kill")
    args = parser.parse_args()
    ports = [int(p) for p in args.ports.split(",")]
    pids = [int(p) for p in args.pids.split(",")]
    if len(ports) != len(pids):
        parser.error("--ports and --pids must have as many entries")

    leader = find_leader(ports, 30.0)
    leader_pid = pids[ports.index(leader)]
    survivors = [p for p in ports if p != leader]

    conn = Resp(leader, 5.0)
    n = 0
    before_end = time.monotonic() + args.before
    last_ok = None
    while time.monotonic() < before_end:
        n += 1
        kind, text = conn.call("SET", f"failover:{n}", "x" * 64)
        if kind != "status":
            raise SystemExit(f"chorus_failover.py: SET on the leader {leader} answered {kind} {text}")
        last_ok = time.monotonic()
    writes_before = n
    conn.close()

    os.kill(leader_pid, signal.SIGKILL)
    killed_at = time.monotonic()

    conns = {}
    attempts = 0
    errors = {}
    index = 0
    new_leader = None
    while True:
        now = time.monotonic()
        if now - killed_at > args.give_up:
            print(json.dumps({"error": f"no write acknowledged within {args.give_up} s", "errors": errors}))
            return 1
        port = survivors[index % len(survivors)]
        index += 1
        attempts += 1
        n += 1
        target = port
        acked = False
        for _hop in range(2):  # the node asked, then the one its MOVED names
            try:
                if target not in conns:
                    conns[target] = Resp(target, args.attempt_timeout)
                kind, text = conns[target].call("SET", f"failover:{n}", "x" * 64)
            except (OSError, ConnectionError, ValueError) as error:
                broken = conns.pop(target, None)
                if broken is not None:
                    broken.close()
                errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                break
            if kind == "status" and text == "OK":
                acked = True
                break
            key = (text or "").split(" ")[0]
            errors[key] = errors.get(key, 0) + 1
            if kind == "error" and text.startswith("MOVED"):
                try:
                    moved_port = int(text.rsplit(":", 1)[1])
                except (IndexError, ValueError):
                    break
                if moved_port == leader or moved_port == target:
                    break
                target = moved_port
                continue
            break
        if acked:
            done = time.monotonic()
            new_leader = target
            break
        time.sleep(0.005)
    for c in conns.values():
        c.close()
    print(
        json.dumps(
            {
                "old_leader_port": leader,
                "new_leader_port": new_leader,
                "writes_before_kill": writes_before,
                "failover_ms": round((done - killed_at) * 1000, 1),
                "gap_ms": round((done - last_ok) * 1000, 1),
                "attempts": attempts,
                "failed_attempts": errors,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
