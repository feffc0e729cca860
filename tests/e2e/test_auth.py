"""AUTH / HELLO AUTH against a node started with --requirepass."""

from __future__ import annotations

import pytest
import redis

from test_commands import read_line

PASSWORD = "s3cret-pw"


@pytest.fixture
def secured(chorus):
    return chorus.start(requirepass=PASSWORD)


def command(sock, *args: bytes | str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    sock.sendall(b"".join(parts))
    return read_line(sock)


def test_noauth_before_auth(secured):
    with secured.connect() as sock:
        assert command(sock, "GET", "k") == b"-NOAUTH Authentication required.\r\n"
        assert command(sock, "SET", "k", "v") == b"-NOAUTH Authentication required.\r\n"
        assert command(sock, "PING") == b"-NOAUTH Authentication required.\r\n"
        assert command(sock, "AUTH", PASSWORD) == b"+OK\r\n"
        assert command(sock, "PING") == b"+PONG\r\n"


def test_wrong_password(secured):
    with secured.connect() as sock:
        wrongpass = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        assert command(sock, "AUTH", "nope") == wrongpass
        assert command(sock, "AUTH", "default", "nope") == wrongpass
        assert command(sock, "AUTH", "someone", PASSWORD) == wrongpass
        assert command(sock, "AUTH", "") == wrongpass
        assert command(sock, "GET", "k") == b"-NOAUTH Authentication required.\r\n"
        assert command(sock, "AUTH", "a", "b", "c") == b"-ERR syntax error\r\n"


def test_auth_forms(secured):
    with secured.connect() as sock:
        assert command(sock, "AUTH", PASSWORD) == b"+OK\r\n"
    with secured.connect() as sock:
        assert command(sock, "AUTH", "default", PASSWORD) == b"+OK\r\n"
        assert command(sock, "SET", "k", "v") == b"+OK\r\n"
        # A failed AUTH after a good one does not undo it (Redis keeps the connection authenticated).
        assert command(sock, "AUTH", "wrong").startswith(b"-WRONGPASS")
        assert command(sock, "GET", "k") == b"$1\r\n"


def test_quit_needs_no_auth(secured):
    with secured.connect() as sock:
        assert command(sock, "QUIT") == b"+OK\r\n"
        assert sock.recv(16) == b""


def test_hello_requires_auth(secured):
    with secured.connect() as sock:
        reply = command(sock, "HELLO", "3")
        assert reply.startswith(b"-NOAUTH HELLO must be called with the client already authenticated")
        # Still RESP2 and still unauthenticated.
        assert command(sock, "GET", "k") == b"-NOAUTH Authentication required.\r\n"


def test_hello_3_auth(secured):
    with secured.connect() as sock:
        assert command(sock, "HELLO", "3", "AUTH", "default", "nope").startswith(b"-WRONGPASS")
        assert command(sock, "HELLO", "3", "AUTH", "default", PASSWORD) == b"%7\r\n"
        # Read the rest of the map: 7 pairs, the last one an empty array.
        rest = b""
        while not rest.endswith(b"*0\r\n"):
            chunk = sock.recv(4096)
            assert chunk, "connection closed in the middle of HELLO's reply"
            rest += chunk
        assert command(sock, "SET", "k", "v") == b"+OK\r\n"
    # redis-py with protocol=3 and a password connects with exactly HELLO 3 AUTH default <pw>.
    client = secured.client(protocol=3, decode_responses=True)
    assert client.get("k") == "v"
    assert client.execute_command("HELLO", "3")["proto"] == 3


def test_redis_py_without_password(secured):
    client = secured.client(decode_responses=True, password=None)
    with pytest.raises(redis.AuthenticationError, match="Authentication required"):
        client.get("k")


def test_redis_py_wrong_password(secured, protocol):
    client = secured.client(protocol=protocol, decode_responses=True, password="nope")
    with pytest.raises(redis.AuthenticationError, match="invalid username-password pair"):
        client.ping()


def test_redis_py_with_password(secured, protocol):
    client = secured.client(protocol=protocol, decode_responses=True)
    assert client.ping() is True
    assert client.set("k", "v") is True
    assert client.get("k") == "v"
    named = secured.client(protocol=protocol, decode_responses=True, username="default")
    assert named.get("k") == "v"


def test_auth_without_requirepass(node):
    with node.connect() as sock:
        assert command(sock, "AUTH", "foo") == (
            b"-ERR AUTH <password> called without any password configured for the default user. "
            b"Are you sure your configuration is correct?\r\n"
        )
        assert command(sock, "PING") == b"+PONG\r\n"
