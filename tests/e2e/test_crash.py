"""Crash safety: SIGKILL the node while many clients write, restart it on the same data dir, and check
that every acknowledged write survived (and nothing that was never written appeared).

The kill moment is chosen by a seeded RNG as a number of acknowledged writes (not a time), so a run is
reproducible: set CHORUS_TEST_SEED to replay one. The seed is printed and is part of every failure
message.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from conftest import wait_until

DEFAULT_SEED = 20261126
CLIENTS = 32
ROUNDS = 3
PIPELINE_DEPTH = 8
PROGRESS_DEADLINE_S = 90


@pytest.fixture
def seed():
    value = int(os.environ.get("CHORUS_TEST_SEED", DEFAULT_SEED))
    print(f"CHORUS_TEST_SEED={value}")
    return value


@dataclass
class ClientLog:
    """What one writer did. `acked` holds writes whose OK arrived; `unknown` those whose reply never
    came (the node died first): they may or may not have survived."""

    index: int
    next_seq: int = 0
    round_start: int = 0
    acked: dict = field(default_factory=dict)
    unknown: dict = field(default_factory=dict)
    # The per-client overwritten key and counter: the last acknowledged and the last attempted values.
    last_acked: int = -1
    last_attempted: int = -1
    incr_acked: int = 0
    incr_attempted: int = 0


class Workload:
    """CLIENTS threads writing unique keys (some in pipelines), an overwritten key and a counter each."""

    def __init__(self, seed: int):
        self.seed = seed
        self.logs = [ClientLog(i) for i in range(CLIENTS)]
        self.lock = threading.Lock()
        self.acked_this_round = 0
        self.errors: list[str] = []

    def value(self, round_no: int, client: int, seq: int) -> bytes:
        # Values of varied sizes, derived from the key so a torn or misplaced value is detected.
        size = (seq * 7919 + client * 104729) % 300
        if seq % 50 == 49:
            size = 20_000 + size * 37  # now and then a large one, which spans more of the log
        return f"r{round_no}-c{client}-s{seq}-".encode() + bytes([65 + (seq + client) % 26]) * size

    def run_round(self, node, round_no: int, kill_after: int, how: str = "kill"):
        self.acked_this_round = 0
        for log in self.logs:
            log.round_start = log.next_seq
        stop = threading.Event()
        # Every writer connects before any writes, so the kill lands while all of them are busy.
        start = threading.Barrier(CLIENTS + 1)
        threads = [
            threading.Thread(target=self.writer, args=(node, round_no, log, start, stop), name=f"writer-{log.index}")
            for log in self.logs
        ]
        for thread in threads:
            thread.start()
        try:
            start.wait(timeout=PROGRESS_DEADLINE_S)
            wait_until(
                lambda: self.acked_this_round >= kill_after or self.errors,
                PROGRESS_DEADLINE_S,
                f"{kill_after} acknowledged writes (seed {self.seed})",
            )
            assert not self.errors, f"seed {self.seed}: writer failed before the kill: {self.errors}"
            if how == "kill":
                node.kill()
            else:
                node.stop()
        finally:
            stop.set()
            start.abort()
            if node.running():
                node.kill()
            for thread in threads:
                thread.join(timeout=PROGRESS_DEADLINE_S)
                assert not thread.is_alive(), f"seed {self.seed}: {thread.name} still running after the kill"
        assert not self.errors, f"seed {self.seed}: {self.errors}"

    def writer(self, node, round_no: int, log: ClientLog, start: threading.Barrier, stop: threading.Event):
        client = None
        try:
            client = redis.Redis(
                host="127.0.0.1",
                port=node.port,
                socket_timeout=PROGRESS_DEADLINE_S,
                socket_connect_timeout=10,
                retry=Retry(NoBackoff(), 0),
                retry_on_error=[],
                single_connection_client=True,
            )
            start.wait(timeout=PROGRESS_DEADLINE_S)
        except Exception as error:
            self.errors.append(f"client {log.index} could not connect: {error!r}")
            start.abort()
            return
        pipelined = log.index % 4 == 3
        try:
            while not stop.is_set():
                if pipelined:
                    self.write_pipeline(client, round_no, log)
                else:
                    self.write_one(client, round_no, log)
        except (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError):
            pass  # the node was killed: what was in flight is in log.unknown
        except Exception as error:  # anything else is a failure of the node
            self.errors.append(f"client {log.index}: {error!r}")
        finally:
            client.close()

    def write_one(self, client, round_no: int, log: ClientLog):
        seq = log.next_seq
        log.next_seq += 1
        key = f"client:{log.index}:{seq}"
        value = self.value(round_no, log.index, seq)
        log.unknown[key] = value
        if seq % 5 == 4:
            # Every fifth step also overwrites the client's "last" key and bumps its counter.
            log.last_attempted = seq
            log.incr_attempted += 1
            assert client.set(f"client:{log.index}:last", seq) is True
            log.last_acked = seq
            client.incr(f"client:{log.index}:counter")
            log.incr_acked += 1
        assert client.set(key, value) is True
        del log.unknown[key]
        log.acked[key] = value
        self.count_ack()

    def write_pipeline(self, client, round_no: int, log: ClientLog):
        pipe = client.pipeline(transaction=False)
        batch = []
        for _ in range(PIPELINE_DEPTH):
            seq = log.next_seq
            log.next_seq += 1
            key = f"client:{log.index}:{seq}"
            value = self.value(round_no, log.index, seq)
            log.unknown[key] = value
            batch.append((key, value))
            pipe.set(key, value)
        results = pipe.execute()
        assert results == [True] * PIPELINE_DEPTH
        for key, value in batch:
            del log.unknown[key]
            log.acked[key] = value
        self.count_ack(len(batch))

    def count_ack(self, n: int = 1):
        with self.lock:
            self.acked_this_round += n

    def verify(self, node):
        """Every acknowledged write is there with its value; an unacknowledged one is there with its
        value or absent; no other key exists."""
        client = node.client(socket_timeout=60)
        seed = self.seed
        expected_keys = set()
        for log in self.logs:
            keys = list(log.acked) + list(log.unknown)
            expected_keys.update(keys)
            values = []
            for start in range(0, len(keys), 500):
                values += client.mget(keys[start : start + 500])
            acked_count = len(log.acked)
            for key, got in zip(keys[:acked_count], values[:acked_count]):
                assert got == log.acked[key], f"seed {seed}: acknowledged {key} lost or wrong: {got!r}"
            for key, got in zip(keys[acked_count:], values[acked_count:]):
                assert got in (None, log.unknown[key]), f"seed {seed}: unacknowledged {key} has {got!r}"
            # A client writes its keys in order (one at a time, or one pipeline at a time), so what
            # survived of this round's keys is a prefix of what it wrote: no hole before a survivor.
            present = sorted(
                seq
                for seq, got in ((int(key.rsplit(":", 1)[1]), got) for key, got in zip(keys, values))
                if got is not None and seq >= log.round_start
            )
            assert present == list(range(log.round_start, log.round_start + len(present))), (
                f"seed {seed}: client {log.index} lost a write before one that survived: "
                f"{sorted(set(range(log.round_start, log.next_seq)) - set(present))[:10]} missing, "
                f"last present {present[-1] if present else None}"
            )
            if log.last_attempted >= 0:
                expected_keys.add(f"client:{log.index}:last")
                last = client.get(f"client:{log.index}:last")
                last = -1 if last is None else int(last)
                assert log.last_acked <= last <= log.last_attempted, (
                    f"seed {seed}: client {log.index} last={last}, acked {log.last_acked}, attempted {log.last_attempted}"
                )
            if log.incr_attempted:
                expected_keys.add(f"client:{log.index}:counter")
                counter = int(client.get(f"client:{log.index}:counter") or 0)
                assert log.incr_acked <= counter <= log.incr_attempted, (
                    f"seed {seed}: client {log.index} counter={counter}, acked {log.incr_acked}, attempted {log.incr_attempted}"
                )
        stored = set(key.decode() for key in client.scan_iter(count=1000))
        unexpected = stored - expected_keys
        assert not unexpected, f"seed {seed}: keys nobody wrote: {sorted(unexpected)[:10]}"
        # The unacknowledged writes that did survive become facts: later rounds expect them.
        for log in self.logs:
            survivors = dict(zip(log.unknown, client.mget(list(log.unknown)) if log.unknown else []))
            for key, value in list(log.unknown.items()):
                if survivors.get(key) == value:
                    log.acked[key] = value
            log.unknown.clear()
            last = client.get(f"client:{log.index}:last")
            log.last_acked = log.last_attempted = -1 if last is None else int(last)
            counter = int(client.get(f"client:{log.index}:counter") or 0)
            log.incr_acked = log.incr_attempted = counter
        return sum(len(log.acked) for log in self.logs)


def crash_rounds(chorus, seed: int, fsync: str, rounds: int, config: dict | None = None):
    rng = random.Random(seed)
    node = chorus.start(fsync=fsync, config=config)
    workload = Workload(seed)
    total = 0
    for round_no in range(rounds):
        kill_after = rng.randint(1000, 6000)
        print(f"round {round_no}: SIGKILL after {kill_after} acknowledged writes (seed {seed}, fsync {fsync})")
        workload.run_round(node, round_no, kill_after)
        in_flight = sum(len(log.unknown) for log in workload.logs)
        node.start()
        survived = workload.verify(node)
        assert survived >= total + kill_after, f"seed {seed}: {survived} keys after round {round_no}"
        total = survived
        print(f"round {round_no}: {survived} keys verified ({in_flight} writes were in flight at the kill)")
    return node, workload


def test_sigkill_keeps_acknowledged_writes_fsync_always(chorus, seed):
    crash_rounds(chorus, seed, "always", ROUNDS)


def test_sigkill_during_checkpoints_and_segment_rolls(chorus, seed):
    # Checkpoints every few hundred entries and small log segments, so kills land while the node
    # writes a checkpoint, deletes a log prefix or starts a new segment.
    config = {"storage": {"checkpoint_entries": 300, "log_segment_bytes_max": 256 * 1024}}
    crash_rounds(chorus, seed + 3, "always", ROUNDS, config=config)


def test_sigkill_keeps_acknowledged_writes_fsync_periodic(chorus, seed):
    # Periodic fsync only risks the last interval on power loss: after a process kill the OS still
    # has every write the node acknowledged. A long interval makes sure kills land between fsyncs.
    crash_rounds(chorus, seed + 1, "periodic:5000", 2)


def test_clean_shutdown_and_restart_keeps_everything(chorus):
    node = chorus.start(fsync="periodic:10000")
    client = node.client(decode_responses=True)
    data = {f"clean:{i}": f"value-{i}" * (i % 13) for i in range(2000)}
    for start in range(0, 2000, 200):
        client.mset(dict(list(data.items())[start : start + 200]))
    pipe = client.pipeline(transaction=False)
    for i in range(500):
        pipe.incr("clean:counter")
        pipe.append("clean:appended", "x")
    pipe.execute()
    client.set("clean:ttl", "v", ex=1000)
    client.set("clean:gone", "v")
    client.delete("clean:gone")
    client.set("clean:expiring", "v", px=100)
    assert node.stop() == 0, "SIGTERM must end the node with exit code 0"
    node.start()
    client = node.client(decode_responses=True)
    keys = list(data)
    assert client.mget(keys) == [data[key] for key in keys]
    assert client.get("clean:counter") == "500"
    assert client.get("clean:appended") == "x" * 500
    assert 990 <= client.ttl("clean:ttl") <= 1000
    assert client.exists("clean:gone") == 0
    # DBSIZE, like Redis's, may count an expired key until the node has reclaimed it.
    wait_until(lambda: client.dbsize() == 2000 + 3, 10, "clean:expiring to be reclaimed after the restart")
    assert client.exists("clean:expiring") == 0
    # And a second clean restart straight away.
    assert node.stop() == 0
    node.start()
    assert node.client(decode_responses=True).dbsize() == 2003


def test_repeated_kills_lose_nothing(chorus, seed):
    """Kill, restart on the same port, write a little, kill again: each recovery starts from the
    last one's state, and a redis-py client simply reconnects."""
    rng = random.Random(seed + 2)
    node = chorus.start(fsync="always")
    client = node.client()
    payload = {f"recover:{i}".encode(): bytes([i % 256]) * 100 for i in range(3000)}
    items = list(payload.items())
    for start in range(0, len(items), 300):
        client.mset(dict(items[start : start + 300]))
    for round_no in range(3):
        node.restart(kill=True, keep_port=True)
        for i in range(rng.randint(1, 50)):
            key = f"recover:r{round_no}:{i}".encode()
            assert client.set(key, b"after-restart") is True
            payload[key] = b"after-restart"
    node.restart(kill=True, keep_port=True)
    keys = list(payload)
    assert client.mget(keys) == [payload[key] for key in keys], f"seed {seed}"
    assert client.dbsize() == len(payload)


def test_sigterm_under_load_keeps_acknowledged_writes(chorus, seed):
    """SIGTERM while 32 clients write: the node exits 0 within the deadline and keeps every
    acknowledged write."""
    node = chorus.start(fsync="always")
    workload = Workload(seed + 4)
    kill_after = random.Random(seed + 4).randint(1000, 6000)
    workload.run_round(node, 0, kill_after, how="term")
    assert node.proc.returncode == 0, f"exit code {node.proc.returncode} after SIGTERM"
    node.start()
    assert workload.verify(node) >= kill_after


def test_expiry_survives_kill(chorus):
    node = chorus.start(fsync="always")
    client = node.client(decode_responses=True)
    client.set("long", "v", ex=1000)
    at = int(time.time()) + 5000
    client.set("absolute", "v", exat=at)
    client.set("short", "v", px=300)
    client.set("plain", "v")
    client.set("persisted", "v", ex=1000)
    client.persist("persisted")
    node.kill()
    node.start()
    client = node.client(decode_responses=True)
    assert 990 <= client.ttl("long") <= 1000
    assert client.expiretime("absolute") == at
    assert client.ttl("plain") == -1
    assert client.ttl("persisted") == -1
    # The short one expires once its time has come, even though the node was down in between.
    wait_until(lambda: client.get("short") is None, 10, "short to expire after the restart")
    node.kill()
    node.start()
    client = node.client(decode_responses=True)
    assert client.get("short") is None
    assert sorted(client.keys("*")) == ["absolute", "long", "persisted", "plain"]


def test_flushall_and_deletes_survive_kill(chorus):
    node = chorus.start(fsync="always")
    client = node.client(decode_responses=True)
    client.mset({f"old:{i}": "v" for i in range(100)})
    client.flushall()
    client.mset({f"new:{i}": "v" for i in range(10)})
    client.delete("new:0", "new:1")
    client.getdel("new:2")
    client.set("new:3", "overwritten")
    node.kill()
    node.start()
    client = node.client(decode_responses=True)
    assert sorted(client.keys("*")) == sorted(f"new:{i}" for i in range(3, 10))
    assert client.get("new:3") == "overwritten"


def records_end(segment):
    """Where the records of an undamaged log segment end: an 18-byte header, then records of a
    4-byte little-endian length, a 4-byte checksum and that many bytes (docs/storage-and-protocol.md)."""
    offset = 18
    while offset + 8 <= len(segment):
        length = int.from_bytes(segment[offset : offset + 4], "little")
        if length == 0 or offset + 8 + length > len(segment):
            break
        offset += 8 + length
    return offset


def newest_log_file(data_dir):
    files = [path for path in data_dir.rglob("*.log") if path.is_file()]
    assert files, f"no *.log file under {data_dir}: the test needs to find the replication log"
    return max(files, key=lambda path: (path.stat().st_mtime_ns, path.name))


@pytest.mark.parametrize("damage", ["cut-1", "cut-7", "cut-30", "zeros", "garbage"])
def test_damaged_log_tail(chorus, damage):
    """What a crash can leave at the end of the log: a torn last entry (cut), or space the file
    system extended without the data (zeros, garbage). The node must start, keep a prefix of the
    writes, and lose at most the entry that was torn."""
    node = chorus.start(fsync="always")
    client = node.client(decode_responses=True)
    for i in range(100):
        assert client.set(f"k{i}", f"value-{i}" * 4) is True
    node.kill()
    log = newest_log_file(node.data_dir)
    data = log.read_bytes()
    # Space the node reserved ahead of its appends (zeros) may follow the records.
    end = records_end(data)
    if damage.startswith("cut-"):
        # The last entry reached the disk only in part: its tail reads as zeros.
        cut = int(damage[4:])
        damaged = data[: end - cut] + b"\0" * (len(data) - end + cut)
    elif damage == "zeros":
        damaged = data + b"\0" * 4096
    else:
        filler = random.Random(99).randbytes(100)
        damaged = data[:end] + filler + data[end + len(filler) :]
    log.write_bytes(damaged)
    node.start()
    client = node.client(decode_responses=True)
    values = client.mget([f"k{i}" for i in range(100)])
    present = [i for i, value in enumerate(values) if value is not None]
    assert present == list(range(len(present))), f"holes after {damage}: {present}"
    assert len(present) >= (99 if damage.startswith("cut-") else 100)
    for i in present:
        assert values[i] == f"value-{i}" * 4
    # The node goes on writing after the damaged tail, and that survives another crash.
    assert client.set("after", "1") is True
    node.kill()
    node.start()
    client = node.client(decode_responses=True)
    assert client.get("after") == "1"
    assert client.dbsize() == len(present) + 1


def test_second_node_on_same_data_dir_is_refused(chorus):
    first = chorus.start(fsync="always")
    first.client().set("k", "v")
    second = chorus.create("second", data_dir=first.data_dir)
    with pytest.raises(AssertionError, match="in use"):
        second.start()
    assert first.client(decode_responses=True).get("k") == "v"
