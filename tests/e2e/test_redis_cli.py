"""The stock `redis-cli` (Debian redis-tools) against a chorus node."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import termios
import time

import pytest

REDIS_CLI = shutil.which("redis-cli")
pytestmark = pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed (apt-get install redis-tools)")

CLI_DEADLINE_S = 60


def cli(node, *args: str, input: bytes | None = None, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    command = [REDIS_CLI, "-h", "127.0.0.1", "-p", str(node.port), *extra, *args]
    return subprocess.run(command, input=input, capture_output=True, timeout=CLI_DEADLINE_S, check=False)


def out(node, *args: str, **kwargs) -> str:
    result = cli(node, *args, **kwargs)
    assert result.returncode == 0, result
    return result.stdout.decode()


def test_set_get(node):
    assert out(node, "SET", "k", "v") == "OK\n"
    assert out(node, "GET", "k") == "v\n"
    assert out(node, "GET", "missing") == "\n"
    assert out(node, "--no-raw", "GET", "missing") == "(nil)\n"
    assert out(node, "--no-raw", "GET", "k") == '"v"\n'
    assert out(node, "DEL", "k", "missing") == "1\n"
    assert out(node, "DBSIZE") == "0\n"


def test_error_reply(node):
    out(node, "SET", "s", "abc")
    # Without a terminal, redis-cli prints an error reply followed by an empty line.
    assert out(node, "INCR", "s") == "ERR value is not an integer or out of range\n\n"
    assert out(node, "FOO", "a", "b") == "ERR unknown command 'FOO', with args beginning with: 'a' 'b' \n\n"


def test_repeat_and_values_from_stdin(node):
    assert out(node, "-r", "5", "INCR", "n") == "1\n2\n3\n4\n5\n"
    value = b"binary\x00value\r\nwith CR LF and \xff bytes"
    assert out(node, "-x", "SET", "bin", input=value) == "OK\n"
    assert out(node, "STRLEN", "bin") == f"{len(value)}\n"
    assert cli(node, "GET", "bin").stdout == value + b"\n"


def test_commands_from_stdin(node):
    script = b"SET a 1\nINCRBY a 41\nGET a\nMSET b 2 c 3\nMGET a b c missing\n"
    assert out(node, input=script) == "OK\n42\n42\nOK\n42\n2\n3\n\n"


def test_resp3_hello(node):
    text = out(node, "HELLO", "3", extra=("-3",))
    # A RESP3 map prints as "name value" lines.
    fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    assert fields["server"] == "redis"
    assert fields["proto"] == "3"
    assert fields["mode"] == "standalone"
    assert out(node, "SET", "k", "v", extra=("-3",)) == "OK\n"
    assert out(node, "CONFIG", "GET", "save", extra=("-3",)).startswith("save")


def test_info_and_scan(node):
    out(node, "MSET", "user:1", "a", "user:2", "b", "other", "c")
    assert out(node, "DBSIZE") == "3\n"
    info = out(node, "INFO", "keyspace")
    assert "db0:keys=3" in info
    assert sorted(out(node, "--scan", "--pattern", "user:*").split()) == ["user:1", "user:2"]
    assert sorted(out(node, "--scan").split()) == ["other", "user:1", "user:2"]
    bigkeys = out(node, "--bigkeys")
    assert "3 strings with 3 bytes" in bigkeys


def test_auth_flag(chorus):
    secured = chorus.start(requirepass="cli-pw")
    assert out(secured, "GET", "k") == "NOAUTH Authentication required.\n\n"
    assert out(secured, "SET", "k", "v", extra=("-a", "cli-pw", "--no-auth-warning")) == "OK\n"
    assert out(secured, "GET", "k", extra=("--user", "default", "--pass", "cli-pw", "--no-auth-warning")) == "v\n"
    wrong = cli(secured, "GET", "k", extra=("-a", "nope", "--no-auth-warning"))
    assert b"WRONGPASS" in wrong.stdout + wrong.stderr


def test_pipe_mass_insert(node, tmp_path):
    count = 10_000
    path = tmp_path / "mass-insert.resp"
    with open(path, "wb") as data:
        for i in range(count):
            key = f"mass:{i}".encode()
            value = f"value-{i}-{'x' * (i % 50)}".encode()
            data.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
    with open(path, "rb") as data:
        result = subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(node.port), "--pipe"],
            stdin=data,
            capture_output=True,
            timeout=CLI_DEADLINE_S * 2,
            check=False,
        )
    report = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, report
    assert f"errors: 0, replies: {count}" in report, report
    assert out(node, "DBSIZE") == f"{count}\n"
    assert out(node, "GET", "mass:9999") == f"value-9999-{'x' * (9999 % 50)}\n"
    assert out(node, "GET", "mass:0") == "value-0-\n"


def test_pipe_mass_insert_inline_commands(node):
    script = "".join(f"SET inline:{i} {i}\r\n" for i in range(1000)).encode()
    result = cli(node, "--pipe", input=script)
    assert result.returncode == 0, result
    assert b"errors: 0, replies: 1000" in result.stdout
    assert out(node, "DBSIZE") == "1000\n"


class Terminal:
    """redis-cli's interactive mode in a pseudo-terminal (it then asks COMMAND DOCS for its hints)."""

    def __init__(self, args: list[str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.environ["TERM"] = "dumb"
            os.execv(REDIS_CLI, [REDIS_CLI, *args])
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))
        self.output = b""

    def read_until(self, token: bytes, deadline_s: float = 20.0) -> bytes:
        deadline = time.monotonic() + deadline_s
        while token not in self.output:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"redis-cli did not print {token!r}; it printed {self.output!r}"
            ready, _, _ = select.select([self.fd], [], [], min(remaining, 0.5))
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                assert chunk, f"redis-cli exited before printing {token!r}; it printed {self.output!r}"
                self.output += chunk
        before, _, self.output = self.output.partition(token)
        return before

    def send(self, line: str):
        os.write(self.fd, line.encode() + b"\r")

    def close(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        os.close(self.fd)


def test_interactive_session(node):
    prompt = f"127.0.0.1:{node.port}> ".encode()
    terminal = Terminal(["-h", "127.0.0.1", "-p", str(node.port)])
    try:
        terminal.read_until(prompt)
        terminal.send("SET ikey hello")
        terminal.read_until(prompt)
        terminal.send("GET ikey")
        assert b'"hello"' in terminal.read_until(prompt)
        terminal.send("DBSIZE")
        assert b"(integer) 1" in terminal.read_until(prompt)
        terminal.send("GET")
        assert b"(error) ERR wrong number of arguments for 'get' command" in terminal.read_until(prompt)
        terminal.send("HELP GET")
        assert b"GET" in terminal.read_until(prompt)
    finally:
        terminal.close()
    assert node.ping_ok()
