#!/usr/bin/env python3
"""Closed-loop PUT load on etcd v3 over its native gRPC API (the same API etcd's own `benchmark`
tool uses), for scripts/bench-replication.sh.

`chorus bench --protocol etcd-http` loads etcd through its JSON gateway, which etcd serves by
re-issuing each request as a gRPC call to itself; this tool skips that hop. It needs only the
grpcio package: the PutRequest (`key` = field 1, `value` = field 2, both bytes) is encoded by hand,
so no generated stubs are needed, and the PutResponse is not decoded (a non-OK gRPC status is an
error).

Each of --clients coroutines sends one PUT, waits for its answer, and sends the next; all share
--conns channels (HTTP/2 connections). Keys are `key:<9 digits>` drawn uniformly from --keys,
values --value-size bytes of 'x', like `chorus bench`. Prints one JSON object with the fields of
`chorus bench --json` that the scripts read, plus `client_cpu` (CPU seconds of this process per
second of run time: near 1.0 means the Python client, one core at most, is the bottleneck).
"""

import argparse
import asyncio
import json
import random
import resource
import sys
import time

import grpc


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def put_request(key: bytes, value: bytes) -> bytes:
    return b"\x0a" + varint(len(key)) + key + b"\x12" + varint(len(value)) + value


def percentile(sorted_values, q):
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


async def run(args) -> dict:
    channels = [grpc.aio.insecure_channel(args.addr) for _ in range(args.conns)]
    puts = [
        channel.unary_unary(
            "/etcdserverpb.KV/Put", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        for channel in channels
    ]
    value = b"x" * args.value_size
    for put in puts:  # connect (and fail early) before the clock starts
        await put(put_request(b"key:warmup", value), timeout=10)

    latencies = []
    errors = 0
    first_error = None
    start = time.perf_counter()
    measure_start = start + args.warmup
    deadline = measure_start + args.duration

    async def client(index: int):
        nonlocal errors, first_error
        rng = random.Random(args.seed * 1_000_003 + index)
        put = puts[index % len(puts)]
        while True:
            sent = time.perf_counter()
            if sent >= deadline:
                return
            key = b"key:%09d" % rng.randrange(args.keys)
            try:
                await put(put_request(key, value), timeout=30)
                ok = True
            except grpc.aio.AioRpcError as error:
                ok = False
                message = f"{error.code().name}: {error.details()}"
            done = time.perf_counter()
            if sent >= measure_start:
                latencies.append(done - sent)
                if not ok:
                    errors += 1
                    if first_error is None:
                        first_error = message

    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(client(i) for i in range(args.clients)))
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = time.perf_counter() - start
    measured = max(1e-9, min(args.duration, elapsed - args.warmup))
    for channel in channels:
        await channel.close()
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    latencies.sort()
    us = lambda seconds: int(seconds * 1_000_000)  # noqa: E731
    return {
        "tool": "etcd_load.py",
        "addr": args.addr,
        "clients": args.clients,
        "conns": args.conns,
        "value_size": args.value_size,
        "requests": len(latencies),
        "errors": errors,
        "first_error": first_error,
        "duration_s": measured,
        "ops_per_sec": len(latencies) / measured,
        "p50_us": us(percentile(latencies, 0.50)),
        "p90_us": us(percentile(latencies, 0.90)),
        "p99_us": us(percentile(latencies, 0.99)),
        "max_us": us(latencies[-1]) if latencies else 0,
        "client_cpu": cpu / elapsed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addr", default="127.0.0.1:2379", help="HOST:PORT of an etcd client URL")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--conns", type=int, default=1, help="gRPC channels shared by the clients")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=0.0, help="unmeasured seconds first")
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--value-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.clients < 1 or args.conns < 1 or args.duration <= 0 or args.keys < 1 or args.value_size < 0:
        parser.error("--clients, --conns, --duration and --keys must be positive")
    try:
        report = asyncio.run(run(args))
    except grpc.aio.AioRpcError as error:
        print(f"etcd_load.py: {args.addr}: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
