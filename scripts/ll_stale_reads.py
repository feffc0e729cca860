#!/usr/bin/env python3
"""Stale-read probe for leaderless mode: writes a fresh key through one node with `w`, and as soon
as the write is acknowledged reads it through another node with `r`; a read that does not return
the acknowledged value is stale. With r + w > n no read should be stale.

One write and one read at a time (a client that reads its own write through another coordinator),
for --rounds rounds or --seconds seconds, whichever ends first. Prints one JSON object:
{"w", "r", "n", "rounds", "stale", "stale_rate", "errors", "first_error"}.

Usage: ll_stale_reads.py --write-port 7401 --read-port 7402 --n 3 --w 1 --r 1 [--rounds 2000]
       [--seconds 10] [--prefix stale] [--host 127.0.0.1]
"""

import argparse
import json
import sys
import time

import redis


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--write-port", type=int, required=True)
    parser.add_argument("--read-port", type=int, required=True)
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--w", type=int, required=True)
    parser.add_argument("--r", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--prefix", default="stale")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    def client(port, w, r):
        connection = redis.Redis(host=args.host, port=port, socket_timeout=10, single_connection_client=True)
        connection.execute_command("CHORUS.QUORUM", args.n, w, r)
        return connection

    writer = client(args.write_port, args.w, 1)
    reader = client(args.read_port, 1, args.r)
    deadline = time.monotonic() + args.seconds if args.seconds is not None else None
    rounds = stale = errors = 0
    first_error = None
    run = f"{args.prefix}:{time.time_ns()}:{args.w}{args.r}"
    while rounds < args.rounds and (deadline is None or time.monotonic() < deadline):
        key = f"{run}:{rounds}"
        value = str(rounds).encode()
        rounds += 1
        try:
            if writer.set(key, value) is not True:
                raise RuntimeError(f"SET {key} was not acknowledged")
            if reader.get(key) != value:
                stale += 1
        except (redis.exceptions.RedisError, RuntimeError) as error:
            errors += 1
            first_error = first_error or str(error)
    measured = rounds - errors
    json.dump(
        {
            "n": args.n,
            "w": args.w,
            "r": args.r,
            "rounds": measured,
            "stale": stale,
            "stale_rate": stale / measured if measured else None,
            "errors": errors,
            "first_error": first_error,
        },
        sys.stdout,
    )
    print()
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
