"""End-to-end fixtures: run the real `chorus` binary as a subprocess and talk to it with clients
this project did not write (redis-py, redis-cli).

The binary is `$CHORUS_BIN`, or `<repo>/target/debug/chorus` (build it with `cargo build -p chorus`).

Fixtures:
  chorus         a factory: `chorus.start(**options)` starts a node in the test's tmp dir and returns
                 a `ChorusNode`; `node.restart()` starts it again on the same data dir. Every node is
                 stopped (SIGTERM, then SIGKILL past a deadline) when the test ends.
  node           one node with default options (fsync=always).
  r              a redis-py client of `node`, once with RESP2 and once with RESP3.

When a test fails, the tail of each node's stderr log is attached to the report.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable

import pytest
import redis

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO_ROOT / "target" / "debug" / "chorus"
START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 30.0
LOG_TAIL_LINES = 150


def chorus_bin() -> Path:
    path = Path(os.environ.get("CHORUS_BIN") or DEFAULT_BIN)
    if not path.exists():
        pytest.exit(f"chorus binary not found at {path}: run `cargo build -p chorus` or set CHORUS_BIN", returncode=4)
    return path


# Ports for test nodes come from below the kernel's ephemeral range: a port the kernel chose for us
# (bind to port 0) sits in that range, and the kernel may hand it to an outgoing connection (a node
# dialling a peer) before the node that was meant to listen on it binds it ("Address already in
# use" at start-up). Below the range only explicit binds compete. The start is spread by pid so two
# test runs on one machine rarely probe the same ports.
_EPHEMERAL_LOW = 32768
_PORT_LOW = 10000
_next_port = _PORT_LOW + (os.getpid() * 97) % (_EPHEMERAL_LOW - _PORT_LOW)


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _EPHEMERAL_LOW


def free_port() -> int:
    """A port nothing listens on right now, below the ephemeral range (see above)."""
    global _next_port
    high = max(_ephemeral_low(), _PORT_LOW + 1000)
    for _ in range(high - _PORT_LOW):
        port = _next_port
        _next_port = _PORT_LOW + (_next_port + 1 - _PORT_LOW) % (high - _PORT_LOW)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def wait_until(condition: Callable[[], object], deadline_s: float, what: str, interval_s: float = 0.01):
    """Polls `condition` until it returns a truthy value (which is returned) or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")
        time.sleep(interval_s)


def raw_ping(port: int, timeout_s: float = 2.0) -> bytes | None:
    """Sends PING on a fresh connection and returns the first reply line, or None if nobody answers.
    A node with requirepass answers -NOAUTH, which still shows it is serving."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                data += chunk
            return data
    except OSError:
        return None


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def render_toml(config: dict) -> str:
    """A minimal TOML writer for the node config: top-level scalars, then one level of tables."""
    lines = [f"{key} = {toml_value(value)}" for key, value in config.items() if not isinstance(value, dict)]
    for table, values in config.items():
        if isinstance(values, dict):
            lines.append(f"\n[{table}]")
            lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


class NodeStartError(AssertionError):
    pass


class ChorusNode:
    """One `chorus server` process and its data dir; can be stopped, killed and started again."""

    def __init__(
        self,
        tmp_dir: Path,
        name: str,
        *,
        fsync: str = "always",
        requirepass: str | None = None,
        max_clients: int | None = None,
        config: dict | str | None = None,
        extra_args: Iterable[str] = (),
        node_id: int = 1,
        data_dir: Path | None = None,
    ):
        self.name = name
        self.dir = tmp_dir / name
        self.data_dir = Path(data_dir) if data_dir is not None else self.dir / "data"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.requirepass = requirepass
        self.max_clients = max_clients
        self.extra_args = list(extra_args)
        self.node_id = node_id
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = self.dir / "node.toml"
            self.config_path.write_text(config if isinstance(config, str) else render_toml(config))
        self.proc: subprocess.Popen | None = None
        # Whether the process's exit is accounted for: the test signalled it, or start() already
        # reported it. An exit otherwise is a crash, reported at teardown.
        self.exit_expected = False
        self.port: int | None = None
        self.admin_port: int | None = None
        self.peer_port: int | None = None
        self.starts = 0
        self.log_paths: list[Path] = []
        self._clients: list[redis.Redis] = []

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.log_paths[-1]

    def command_line(self) -> list[str]:
        args = [
            str(chorus_bin()),
            "server",
            "--id",
            str(self.node_id),
            "--data-dir",
            str(self.data_dir),
            "--client-addr",
            f"127.0.0.1:{self.port}",
            "--admin-addr",
            f"127.0.0.1:{self.admin_port}",
            "--peer-addr",
            f"127.0.0.1:{self.peer_port}",
            "--fsync",
            self.fsync,
        ]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        if self.requirepass is not None:
            args += ["--requirepass", self.requirepass]
        if self.max_clients is not None:
            args += ["--max-clients", str(self.max_clients)]
        return args + self.extra_args

    def start(self, keep_port: bool = False) -> "ChorusNode":
        """Starts the process and waits until it answers PING (NodeStartError if it exits or does
        not answer within START_DEADLINE_S). The node gets fresh free ports, or with keep_port
        the client port it had before (so existing redis-py clients can reconnect)."""
        assert self.proc is None or self.proc.poll() is not None, "node already running"
        keep = keep_port and self.port is not None
        # A port chosen by binding to 0 could in principle be taken before the node binds it:
        # retry with a fresh port when the node exits for that reason.
        for _attempt in range(1 if keep else 3):
            if self._start_once(self.port if keep else free_port()):
                return self
        raise NodeStartError(f"node {self.name} could not bind its port\n{self.log_tail()}")

    def _start_once(self, port: int) -> bool:
        self.port = port
        self.admin_port = free_port()
        self.peer_port = free_port()
        self.starts += 1
        log_path = self.dir / f"node-{self.starts}.log"
        self.log_paths.append(log_path)
        self.exit_expected = False
        env = dict(os.environ, NO_COLOR="1", RUST_BACKTRACE="1")
        env.setdefault("RUST_LOG", "info")
        env.pop("CHORUS_REQUIREPASS", None)
        with open(log_path, "wb") as log:
            log.write(("$ " + " ".join(self.command_line_for_log()) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command_line(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.dir,
            )
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.exit_expected = True
                text = self.log_path.read_text(errors="replace")
                if "cannot listen" in text and "in use" in text.lower():
                    return False
                raise NodeStartError(
                    f"node {self.name} exited with {self.proc.returncode} during startup\n{self.log_tail()}"
                )
            reply = raw_ping(self.port, timeout_s=1.0)
            if reply is not None and (reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")):
                return True
            time.sleep(0.01)
        self._terminate(signal.SIGKILL)
        raise NodeStartError(f"node {self.name} did not answer PING within {START_DEADLINE_S}s\n{self.log_tail()}")

    def command_line_for_log(self) -> list[str]:
        line = self.command_line()
        if self.requirepass is not None:
            index = line.index("--requirepass")
            line[index + 1] = "***"
        return line

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _terminate(self, sig: int, deadline_s: float = STOP_DEADLINE_S) -> int | None:
        if self.proc is None:
            return None
        # Disconnect (but keep) the node's redis-py clients: after a restart with keep_port they
        # reconnect on their next command.
        self.close_clients(forget=False)
        if self.proc.poll() is None:
            self.exit_expected = True
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=deadline_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=deadline_s)
                raise AssertionError(f"node {self.name} ignored signal {sig} for {deadline_s}s and was killed")
        return self.proc.returncode

    def stop(self) -> int | None:
        """Clean shutdown: SIGTERM and wait for the process to exit (SIGKILL past the deadline)."""
        return self._terminate(signal.SIGTERM)

    def kill(self) -> int | None:
        """A crash: SIGKILL, no chance to flush anything."""
        return self._terminate(signal.SIGKILL)

    def restart(self, kill: bool = False, keep_port: bool = False) -> "ChorusNode":
        """Stops the node (SIGTERM, or SIGKILL with kill=True) and starts it on the same data dir.
        Without keep_port the node gets a fresh port and clients must be made again."""
        if self.running():
            if kill:
                self.kill()
            else:
                self.stop()
        return self.start(keep_port=keep_port)

    # -- clients -----------------------------------------------------------------------------

    def client(self, protocol: int = 2, **kwargs) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 20)
        kwargs.setdefault("socket_connect_timeout", 10)
        if self.requirepass is not None:
            kwargs.setdefault("password", self.requirepass)
        client = redis.Redis(host="127.0.0.1", port=self.port, protocol=protocol, **kwargs)
        self._clients.append(client)
        return client

    def close_clients(self, forget: bool = True):
        for client in self._clients:
            try:
                client.close()
            except Exception:
                pass
        if forget:
            self._clients.clear()

    def connect(self, timeout_s: float = 10.0) -> socket.socket:
        """A raw TCP connection to the client port."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s)

    def ping_ok(self) -> bool:
        """PING on a fresh connection answers +PONG."""
        return raw_ping(self.port, timeout_s=10.0) == b"+PONG\r\n"

    # -- logs --------------------------------------------------------------------------------

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        parts = []
        for path in self.log_paths:
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            shown = text[-lines:]
            skipped = len(text) - len(shown)
            header = f"--- {path}" + (f" (last {len(shown)} of {len(text)} lines)" if skipped else "")
            parts.append("\n".join([header, *shown]))
        return "\n".join(parts)


class ChorusFactory:
    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.nodes: list[ChorusNode] = []

    def create(self, name: str | None = None, **options) -> ChorusNode:
        """A node that is not started yet (options as for ChorusNode)."""
        node = ChorusNode(self.tmp_path, name or f"node{len(self.nodes) + 1}", **options)
        self.nodes.append(node)
        return node

    def start(self, name: str | None = None, **options) -> ChorusNode:
        """Creates and starts a node: fsync="always", requirepass, max_clients, config (a dict
        written as TOML, or TOML text), extra_args, data_dir (default: a fresh dir per node)."""
        return self.create(name, **options).start()

    def stop_all(self):
        """SIGTERMs every node still running. A node that exited without being signalled, or
        that did not exit 0 on SIGTERM, fails the test (at teardown)."""
        errors = []
        for node in self.nodes:
            if node.proc is None:
                continue
            if node.proc.poll() is not None and not node.exit_expected:
                errors.append(f"node {node.name} exited by itself with code {node.proc.returncode}")
                continue
            if node.running():
                try:
                    code = node.stop()
                except AssertionError as error:
                    errors.append(str(error))
                    continue
                if code != 0:
                    errors.append(f"node {node.name} exited with code {code} after SIGTERM")
        if errors:
            raise AssertionError("; ".join(errors))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        factory = item.funcargs.get("chorus") if hasattr(item, "funcargs") else None
        if isinstance(factory, ChorusFactory):
            for node in factory.nodes:
                report.sections.append((f"chorus {node.name} log ({report.when})", node.log_tail()))


@pytest.fixture
def chorus(tmp_path) -> ChorusFactory:
    factory = ChorusFactory(tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture
def node(chorus) -> ChorusNode:
    return chorus.start()


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def protocol(request) -> int:
    return request.param


@pytest.fixture
def r(node, protocol) -> redis.Redis:
    client = node.client(protocol=protocol, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def rb(node, protocol) -> redis.Redis:
    """Like `r`, without decoding: replies are bytes."""
    client = node.client(protocol=protocol)
    yield client
    client.close()

