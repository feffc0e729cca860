"""Bad and hostile input against a live node. After each case the node must still answer PING on a
fresh connection, and a client connected before the bad input must be unaffected."""

from __future__ import annotations

import random
import resource
import selectors
import shutil
import socket
import struct
import subprocess
import time

import pytest
import redis

from conftest import wait_until

LIMITS = {"bulk_bytes_max": 1024, "array_len_max": 16, "inline_bytes_max": 256}


def read_all(sock: socket.socket, deadline_s: float = 10.0) -> tuple[bytes, bool]:
    """Everything the node sends until it closes the connection. Returns (data, closed)."""
    sock.settimeout(deadline_s)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except socket.timeout:
        return data, False
    except ConnectionResetError:
        return data, True


def read_exactly(sock: socket.socket, expected: bytes) -> bytes:
    data = b""
    while len(data) < len(expected):
        chunk = sock.recv(len(expected) - len(data))
        if not chunk:
            break
        data += chunk
    return data


def encode(*args: bytes | str) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class Bystander:
    """A client connected before the bad input, with a key it checks afterwards."""

    def __init__(self, node):
        self.node = node
        self.client = node.client(decode_responses=True, single_connection_client=True)
        self.client.set("bystander", "still here")
        self.id = self.client.client_id()

    def check(self):
        assert self.node.running(), "the node process exited"
        assert self.node.ping_ok(), "the node does not answer PING on a fresh connection"
        # Same connection as before (single_connection_client: a reconnect would change the id).
        assert self.client.client_id() == self.id
        assert self.client.get("bystander") == "still here"
        assert self.client.incr("bystander-counter") >= 1


@pytest.fixture
def bystander(node):
    return Bystander(node)


@pytest.fixture
def limited(chorus):
    """A node with small request limits."""
    return chorus.start(config={"limits": LIMITS})


# ---------------------------------------------------------------------------------------------
# Malformed frames: -ERR Protocol error: ... and the connection is closed
# ---------------------------------------------------------------------------------------------

MALFORMED = [
    (b"*abc\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"*1\r\n$-5\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*1\r\n$abc\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*1\r\n:1\r\n", b"-ERR Protocol error: expected '$', got ':'\r\n"),
    (b"*1\r\n+OK\r\n", b"-ERR Protocol error: expected '$', got '+'\r\n"),
    (b"*1\r\n*1\r\n", b"-ERR Protocol error: expected '$', got '*'\r\n"),
    (b"*2\r\n$4\r\nECHO\r\n$-1\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*99999999999\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"*1\r\n$99999999999999999999\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*\xff\xfe\x00\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"*1\r\n$\x00\x01\x02\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b'SET "a b\r\n', b"-ERR Protocol error: unbalanced quotes in request\r\n"),
    (b"SET 'a b\r\n", b"-ERR Protocol error: unbalanced quotes in request\r\n"),
    (b'SET "a"b c\r\n', b"-ERR Protocol error: unbalanced quotes in request\r\n"),
]


@pytest.mark.parametrize("frame, reply", MALFORMED, ids=[repr(frame)[2:-1] for frame, _ in MALFORMED])
def test_malformed_frame(node, bystander, frame, reply):
    with node.connect() as sock:
        sock.sendall(frame)
        data, closed = read_all(sock)
    assert data == reply
    assert closed, "the connection must be closed after a protocol error"
    bystander.check()


def test_malformed_frame_after_good_commands(node, bystander):
    # Replies to the requests before the bad one arrive first, in order; then the error; then close.
    with node.connect() as sock:
        sock.sendall(encode("SET", "a", "1") + encode("GET", "a") + b"PING\r\n" + b"*1\r\n:1\r\n" + encode("SET", "b", "2"))
        data, closed = read_all(sock)
    assert data == b"+OK\r\n$1\r\n1\r\n+PONG\r\n-ERR Protocol error: expected '$', got ':'\r\n"
    assert closed
    client = node.client(decode_responses=True)
    assert client.get("a") == "1"
    assert client.get("b") is None  # after the protocol error nothing more is executed
    bystander.check()


def test_garbage_bytes(node, bystander):
    """Random garbage on many connections: each gets some reply or is closed; the node survives."""
    seed = 20240611
    rng = random.Random(seed)
    for _ in range(100):
        size = rng.randint(1, 300)
        prefix = rng.choice([b"", b"*", b"$", b"*1\r\n$", b"*2\r\n$3\r\nGET\r\n"])
        junk = prefix + bytes(rng.randrange(256) for _ in range(size)) + b"\r\n"
        with node.connect() as sock:
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            data, closed = read_all(sock)
        assert closed, f"seed {seed}: connection not closed after {junk!r}"
        for line in data.split(b"\r\n"):
            assert not line.startswith(b"-ERR internal"), (seed, junk, data)
    bystander.check()


def test_empty_and_inline_edge_cases(node, bystander):
    with node.connect() as sock:
        # Empty lines and empty multibulks are ignored; a bare LF ends an inline command.
        sock.sendall(b"\r\n\r\n*0\r\n*-1\r\nPING\n" + encode("ECHO", "x"))
        assert read_exactly(sock, b"+PONG\r\n$1\r\nx\r\n") == b"+PONG\r\n$1\r\nx\r\n"
        sock.sendall(b'SET "quoted key" "a\\x00b\\r\\n"\r\n')
        assert read_exactly(sock, b"+OK\r\n") == b"+OK\r\n"
    assert node.client().get("quoted key") == b"a\x00b\r\n"
    bystander.check()


# ---------------------------------------------------------------------------------------------
# Limits: refused as soon as the header arrives, before any payload
# ---------------------------------------------------------------------------------------------


def test_oversized_bulk_refused_at_header(limited):
    bystander = Bystander(limited)
    with limited.connect() as sock:
        # Only the header of a 1025-byte bulk string: the payload is never sent.
        sock.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1025\r\n")
        data, closed = read_all(sock)
    assert data == b"-ERR Protocol error: invalid bulk length\r\n"
    assert closed
    # At the limit is fine.
    client = limited.client()
    assert client.set("k", b"x" * 1024) is True
    assert client.strlen("k") == 1024
    # redis-py reads the protocol error (or finds the connection closed while still sending).
    with pytest.raises((redis.ResponseError, redis.ConnectionError), match="invalid bulk length|Connection|closed"):
        client.set("k", b"x" * 1025)
    # The node closed that connection after the protocol error; whether redis-py has noticed by the
    # next command is a race, so the value is read on a fresh client.
    assert limited.client().strlen("k") == 1024
    bystander.check()


def test_oversized_array_refused_at_header(limited):
    bystander = Bystander(limited)
    with limited.connect() as sock:
        sock.sendall(b"*17\r\n")
        data, closed = read_all(sock)
    assert data == b"-ERR Protocol error: invalid multibulk length\r\n"
    assert closed
    client = limited.client(decode_responses=True)
    keys = [f"k{i}" for i in range(15)]
    assert client.mget(keys) == [None] * 15  # MGET + 15 keys = 16 elements: allowed
    with pytest.raises((redis.ResponseError, redis.ConnectionError), match="invalid multibulk length|Connection|closed"):
        client.mget(keys + ["one-too-many"])
    bystander.check()


def test_oversized_inline_refused(limited):
    bystander = Bystander(limited)
    with limited.connect() as sock:
        # 300 bytes with no newline: more than inline_bytes_max can ever become a command.
        sock.sendall(b"x" * 300)
        data, closed = read_all(sock)
    assert data == b"-ERR Protocol error: too big inline request\r\n"
    assert closed
    with limited.connect() as sock:
        sock.sendall(b"ECHO " + b"y" * 200 + b"\r\n")
        assert read_exactly(sock, b"$200\r\n" + b"y" * 200 + b"\r\n") == b"$200\r\n" + b"y" * 200 + b"\r\n"
    bystander.check()


def test_large_values_within_default_limits(rb):
    value = bytes(random.Random(7).randrange(256) for _ in range(256)) * 8192  # 2 MiB
    assert rb.set("big", value) is True
    assert rb.get("big") == value
    assert rb.strlen("big") == len(value)
    assert rb.append("big", value) == 2 * len(value)
    assert rb.getrange("big", len(value) - 2, len(value) + 1) == value[-2:] + value[:2]


# ---------------------------------------------------------------------------------------------
# Command errors with Redis's exact text (raw socket)
# ---------------------------------------------------------------------------------------------


def test_error_replies_exact_text(node, bystander):
    cases = [
        (encode("FOO", "a"), b"-ERR unknown command 'FOO', with args beginning with: 'a' \r\n"),
        (encode("FOO"), b"-ERR unknown command 'FOO', with args beginning with: \r\n"),
        (encode("FOO", "a", "b"), b"-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n"),
        (encode("GET"), b"-ERR wrong number of arguments for 'get' command\r\n"),
        (encode("get", "a", "b"), b"-ERR wrong number of arguments for 'get' command\r\n"),
        (encode("SET", "k"), b"-ERR wrong number of arguments for 'set' command\r\n"),
        (encode("SET", "s", "abc"), b"+OK\r\n"),
        (encode("INCR", "s"), b"-ERR value is not an integer or out of range\r\n"),
        (encode("INCRBY", "n", "1.5"), b"-ERR value is not an integer or out of range\r\n"),
        (encode("SET", "k", "v", "EX", "0"), b"-ERR invalid expire time in 'set' command\r\n"),
        (encode("SET", "k", "v", "NX", "XX"), b"-ERR syntax error\r\n"),
        (b"FOO a\r\n", b"-ERR unknown command 'FOO', with args beginning with: 'a' \r\n"),
        (b"get\r\n", b"-ERR wrong number of arguments for 'get' command\r\n"),
        (encode("PING"), b"+PONG\r\n"),
    ]
    with node.connect() as sock:
        for request, reply in cases:
            sock.sendall(request)
            assert read_exactly(sock, reply) == reply, request
        # All of them pipelined at once: same replies, same order, connection still open.
        sock.sendall(b"".join(request for request, _ in cases))
        expected = b"".join(reply for _, reply in cases)
        assert read_exactly(sock, expected) == expected
    bystander.check()


def test_unknown_command_args_are_truncated_like_redis(node):
    # Redis quotes at most 128 characters of the arguments.
    with node.connect() as sock:
        sock.sendall(encode("NOPE", "x" * 200))
        data = read_exactly(sock, b"-ERR unknown command 'NOPE', with args beginning with: '" + b"x" * 128 + b"' \r\n")
    assert data == b"-ERR unknown command 'NOPE', with args beginning with: '" + b"x" * 128 + b"' \r\n"


def test_long_keys(node, bystander):
    """Keys far longer than usual either work like Redis's (which allows 512 MB keys) or are refused
    with an error reply: never a dropped connection or a broken node."""
    client = node.client()
    assert client.set(b"k" * 60_000, b"v") is True
    assert client.get(b"k" * 60_000) == b"v"
    for size in (70_000, 300_000):
        key = b"L" * size
        try:
            stored = client.set(key, b"long")
        except redis.ResponseError:
            stored = False
        assert client.get(key) == (b"long" if stored else None)
        assert client.exists(key) == (1 if stored else 0)
    assert client.get(b"k" * 60_000) == b"v"
    bystander.check()


# ---------------------------------------------------------------------------------------------
# Binary safety through redis-py
# ---------------------------------------------------------------------------------------------


def test_binary_keys_and_values(rb, node):
    bystander = Bystander(node)
    samples = {
        b"nul\x00key": b"nul\x00value\x00",
        b"crlf\r\nkey": b"line1\r\nline2\r\n",
        b"\r\n": b"\r\n",
        b"$3\r\nfoo\r\n": b"*1\r\n$4\r\nPING\r\n",
        b"all-bytes": bytes(range(256)),
        b"\xff\xfe\xfd": b"\x00" * 100,
        b"": b"empty key",
        b"empty value": b"",
    }
    for key, value in samples.items():
        assert rb.set(key, value) is True
    for key, value in samples.items():
        assert rb.get(key) == value, key
        assert rb.strlen(key) == len(value)
    assert rb.mget(list(samples)) == list(samples.values())
    assert sorted(rb.keys(b"*")) == sorted(samples.keys() | {b"bystander"})
    assert sorted(rb.scan_iter(match=b"nul\x00*")) == [b"nul\x00key"]
    assert rb.append(b"nul\x00key", b"\r\n\x00") == len(samples[b"nul\x00key"]) + 3
    assert rb.getrange(b"all-bytes", 10, 13) == bytes([10, 11, 12, 13])
    assert rb.exists(*samples.keys()) == len(samples)
    assert rb.delete(b"\r\n") == 1
    assert rb.get(b"\r\n") is None
    bystander.check()


def test_binary_survives_restart(chorus):
    node = chorus.start()
    client = node.client()
    data = {bytes([i, 0, 13, 10, i]): bytes([255 - i, 0, 10, 13]) * (i + 1) for i in range(64)}
    client.mset(data)
    node.restart()
    client = node.client()
    assert client.mget(list(data)) == list(data.values())


# ---------------------------------------------------------------------------------------------
# Clients that misbehave at the transport level
# ---------------------------------------------------------------------------------------------


def test_client_vanishes_mid_frame(node, bystander):
    halves = [
        b"*3\r\n$3\r\nSET\r\n$4\r\nhalf\r\n$100\r\nabc",  # half a bulk payload
        b"*3\r\n$3\r\nSET\r\n$4\r\nhalf\r\n$10",  # half a bulk header
        b"*3\r\n$3\r\nSE",  # half the command name
        b"*3",  # half a multibulk header
        b"SET half inline",  # an inline command without its newline
    ]
    for half in halves:
        with node.connect() as sock:
            sock.sendall(half)
        # And once with a reset instead of a clean close.
        sock = node.connect()
        sock.sendall(half)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    bystander.check()
    assert bystander.client.exists("half") == 0
    client = bystander.client
    wait_until(lambda: client.info("clients")["connected_clients"] == 1, 30, "the vanished connections to be dropped")


def test_huge_pipeline_without_reading_then_close(node, bystander):
    """A client pipelines far more than the node will buffer, never reads a reply, and closes."""
    one = encode("SET", "flood", "x" * 64) + encode("GET", "flood") + encode("PING")
    chunk = one * 1000
    total = 0
    with node.connect() as sock:
        sock.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_WRITE)
        # Write until the node has stopped reading (both socket buffers full) or 100 MiB went out.
        while total < 100 * 1024 * 1024:
            try:
                # send() may take part of the chunk: go on from where it stopped.
                total += sock.send(chunk[total % len(chunk) :])
            except BlockingIOError:
                if not selector.select(timeout=2.0):
                    break
        selector.close()
    assert total > len(chunk) * 10
    bystander.check()
    client = bystander.client
    wait_until(lambda: client.info("clients")["connected_clients"] == 1, 30, "the flooding connection to be dropped")
    assert client.get("flood") == "x" * 64


def test_huge_pipeline_reset(node, bystander):
    """A client sends a big pipeline and resets the connection (RST) without reading anything."""
    one = encode("INCR", "reset-counter") + encode("PING")
    payload = one * 20_000
    sock = node.connect()
    sock.setblocking(False)
    try:
        sent = sock.send(payload)
    except BlockingIOError:
        sent = 0
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    bystander.check()
    client = bystander.client
    wait_until(lambda: client.info("clients")["connected_clients"] == 1, 30, "the reset connection to be dropped")
    # The node may have executed what it read before the reset, and nothing it never received.
    counter = int(client.get("reset-counter") or 0)
    assert 0 <= counter <= -(-sent // len(one))


def raise_nofile_limit(wanted: int):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        pytest.fail(f"need {wanted} open files, the hard limit is {hard}")


def test_2000_concurrent_connections(node, bystander):
    count = 2000
    raise_nofile_limit(count + 200)
    socks = []
    try:
        for _ in range(count):
            socks.append(node.connect(timeout_s=30))
        client = bystander.client
        wait_until(
            lambda: client.info("clients")["connected_clients"] >= count + 1, 60, f"{count} connections to be accepted"
        )
        # Every connection sends PING and SET before any reply is read: all are open at once.
        expected = {}
        for i, sock in enumerate(socks):
            sock.sendall(b"PING\r\n" + encode("SET", f"conn:{i}", f"value-{i}"))
            expected[sock.fileno()] = b"+PONG\r\n+OK\r\n"
        received = {sock.fileno(): b"" for sock in socks}
        selector = selectors.DefaultSelector()
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        pending = set(received)
        deadline = time.monotonic() + 120
        while pending:
            assert time.monotonic() < deadline, f"{len(pending)} connections got no full reply"
            for key, _ in selector.select(timeout=1.0):
                data = key.fileobj.recv(4096)
                assert data, "a connection was closed by the node"
                received[key.fd] += data
                if len(received[key.fd]) >= len(expected[key.fd]):
                    pending.discard(key.fd)
                    selector.unregister(key.fileobj)
        selector.close()
        assert received == expected
        assert client.dbsize() == count + 1  # + the bystander's key
        values = client.mget([f"conn:{i}" for i in range(count)])
        assert values == [f"value-{i}" for i in range(count)]
    finally:
        for sock in socks:
            sock.close()
    bystander.check()
    wait_until(lambda: bystander.client.info("clients")["connected_clients"] == 1, 60, "all connections to close")


def test_2000_concurrent_redis_py_clients(node):
    """The same with redis-py clients from threads (each its own connection)."""
    import concurrent.futures

    count = 2000
    raise_nofile_limit(count + 200)
    clients = [node.client(decode_responses=True, single_connection_client=True) for _ in range(count)]

    def work(i):
        client = clients[i]
        assert client.ping() is True
        assert client.set(f"py:{i}", str(i)) is True
        return client.get(f"py:{i}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(work, range(count)))
    assert results == [str(i) for i in range(count)]
    observer = clients[0]
    wait_until(lambda: observer.info("clients")["connected_clients"] == count, 30, f"exactly {count} clients")
    assert observer.dbsize() == count
    node.close_clients()


def test_max_clients(chorus):
    node = chorus.start(max_clients=5)
    first = node.client(single_connection_client=True)
    # Wait until the startup probe's connection is gone and this one is the only client.
    wait_until(lambda: first.info("clients")["connected_clients"] == 1, 30, "only one client to be connected")
    held = [node.connect() for _ in range(4)]
    try:
        for sock in held:
            sock.sendall(b"PING\r\n")
            assert read_exactly(sock, b"+PONG\r\n") == b"+PONG\r\n"
        with node.connect() as extra:
            data, closed = read_all(extra)
        assert data == b"-ERR max number of clients reached\r\n"
        assert closed
    finally:
        for sock in held:
            sock.close()
    assert first.ping() is True
    wait_until(node.ping_ok, 30, "a slot to free up after the held connections closed")


def test_listen_backlog_absorbs_connection_bursts(node):
    """Redis listens with a backlog of 511 (tcp-backlog). With a smaller one, a burst of connects
    (a pool of 2000 clients starting at once) overflows the accept queue and the kernel drops SYNs:
    those clients stall for the 1 s (then 3 s, ...) SYN retransmit timeout."""
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("ss (iproute2) is not installed")
    listing = subprocess.run([ss, "-ltnH", f"sport = :{node.port}"], capture_output=True, text=True, check=True)
    lines = [line.split() for line in listing.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, listing.stdout
    # For a listening socket, ss shows the backlog in the Send-Q column.
    backlog = int(lines[0][2])
    assert backlog >= 511, f"listen backlog is {backlog}"
