"""Single-leader replication across real processes on loopback: a 3-voter group, kill -9 of the
leader under write load, failover, no acknowledged write lost under `quorum`, and the old leader
rejoining as a follower."""

import json
import os
import random
import signal
import subprocess
import threading
import time
import urllib.request

import pytest
import redis

from conftest import chorus_bin, free_port, wait_until

ELECTION_TIMEOUT_MAX_S = 2.0  # the node's default election_timeout_ms_max


class Group:
    """`size` chorus servers on loopback forming one group (the leaderless and multi-leader test
    harnesses build on it). With `admin`, every node also serves the admin port (/metrics,
    /status)."""

    def __init__(self, tmp_path, size=3, durability="quorum", extra_args=(), admin=False):
        self.tmp_path = tmp_path
        self.ids = list(range(1, size + 1))
        self.client_ports = {i: free_port() for i in self.ids}
        self.peer_ports = {i: free_port() for i in self.ids}
        self.admin_ports = {i: free_port() for i in self.ids} if admin else None
        self.durability = durability
        self.extra_args = list(extra_args)
        self.learners = set()
        self.procs = {}
        self.logs = {}
        self.initial_cluster = ",".join(f"{i}=127.0.0.1:{self.peer_ports[i]}" for i in self.ids)

    def start(self, node_id):
        log_path = self.tmp_path / f"node{node_id}-{len(self.logs.get(node_id, [])) + 1}.log"
        self.logs.setdefault(node_id, []).append(log_path)
        args = [
            str(chorus_bin()), "server", "--id", str(node_id),
            "--data-dir", str(self.tmp_path / f"data{node_id}"),
            "--client-addr", f"127.0.0.1:{self.client_ports[node_id]}",
            "--peer-addr", f"127.0.0.1:{self.peer_ports[node_id]}",
            "--initial-cluster", self.initial_cluster,
            "--durability", self.durability,
            *self.extra_args,
            *self.node_args(node_id),
        ]
        if self.admin_ports is not None:
            args += ["--admin-addr", f"127.0.0.1:{self.admin_ports[node_id]}"]
        if node_id in self.learners:
            args.append("--learner")
        env = dict(os.environ, NO_COLOR="1", RUST_LOG=os.environ.get("RUST_LOG", "info"))
        with open(log_path, "wb") as log:
            self.procs[node_id] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    def node_args(self, node_id):
        """Arguments of one node beyond those every node gets (for harnesses built on this one)."""
        return []

    def add_learner(self, node_id):
        """Starts node `node_id` as a learner joining the group (it still has to be added on the
        leader with CHORUS.MEMBER ADD); returns its peer address."""
        self.client_ports[node_id] = free_port()
        self.peer_ports[node_id] = free_port()
        self.learners.add(node_id)
        self.ids.append(node_id)
        self.start(node_id)
        return f"127.0.0.1:{self.peer_ports[node_id]}"

    def start_all(self):
        for node_id in self.ids:
            self.start(node_id)

    def client(self, node_id, **kwargs):
        return redis.Redis(port=self.client_ports[node_id], socket_timeout=5, **kwargs)

    def info(self, node_id, section="replication"):
        try:
            return self.client(node_id).info(section)
        except redis.exceptions.RedisError:
            return None

    def leader(self, among=None):
        """The node that says it leads, once every live node agrees on it."""
        leaders = set()
        for node_id in self.ids if among is None else among:
            info = self.info(node_id)
            if info is None:
                return None
            if info.get("chorus_role") == "leader":
                if not info.get("chorus_leader_ready"):
                    return None  # elected, but still applying its no-op: it answers TRYAGAIN
                leaders.add(node_id)
        return leaders.pop() if len(leaders) == 1 else None

    def kill(self, node_id):
        self.procs[node_id].send_signal(signal.SIGKILL)
        self.procs[node_id].wait()

    def stop_all(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def log_tails(self, lines=20):
        out = []
        for paths in self.logs.values():
            for path in paths:
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    def status(self, node_id):
        """The admin port's /status JSON (with `admin`)."""
        url = f"http://127.0.0.1:{self.admin_ports[node_id]}/status"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def metrics(self, node_id):
        """The node's Prometheus page (with `admin`) as {metric line name, labels included: value}."""
        url = f"http://127.0.0.1:{self.admin_ports[node_id]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line and not line.startswith("#")}


@pytest.fixture
def group(tmp_path):
    g = Group(tmp_path)
    g.start_all()
    yield g
    g.stop_all()


def write_anywhere(group, key, value, live):
    """One SET sent to whichever live node leads; True if acknowledged, False on a definite error,
    None if the outcome is unknown (connection lost mid-request)."""
    for node_id in live:
        try:
            reply = group.client(node_id).set(key, value)
            return reply is True
        except redis.exceptions.ResponseError as error:
            text = str(error)
            if text.startswith("MOVED") or text.startswith("TRYAGAIN"):
                continue
            if "replaced by a new leader" in text:
                return False
            raise
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            continue
    return False


def test_a_group_elects_one_leader_and_replicates_writes(group):
    leader = wait_until(lambda: group.leader(), 15, "a leader is elected")
    client = group.client(leader)
    assert client.set("greeting", "hello") is True
    assert client.incr("counter") == 1
    assert client.get("greeting") == b"hello"
    follower = next(i for i in group.ids if i != leader)
    with pytest.raises(redis.exceptions.ResponseError, match=f"MOVED .* 127.0.0.1:{group.client_ports[leader]}"):
        group.client(follower).set("x", "1")
    # Every member applies the writes (INFO keyspace counts applied keys).
    for node_id in group.ids:
        wait_until(lambda: group.client(node_id).info("keyspace").get("db0", {}).get("keys") == 2, 10,
                   f"node {node_id} applies both writes")


def test_kill_9_of_the_leader_under_load_loses_no_acknowledged_write(group):
    seed = int(os.environ.get("CHORUS_TEST_SEED", "1"))
    rng = random.Random(seed)
    leader = wait_until(lambda: group.leader(), 15, "a leader is elected")
    acknowledged = {}
    lock = threading.Lock()
    stop = threading.Event()
    live = list(group.ids)

    def writer(worker):
        sequence = 0
        while not stop.is_set():
            key = f"w{worker}:{sequence}"
            value = f"{worker}-{sequence}-{seed}"
            outcome = write_anywhere(group, key, value, list(live))
            if outcome:
                with lock:
                    acknowledged[key] = value
            sequence += 1

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(8)]
    for thread in threads:
        thread.start()
    kill_after = rng.randint(200, 600)
    wait_until(lambda: len(acknowledged) >= kill_after, 30, f"{kill_after} writes acknowledged (seed {seed})")
    group.kill(leader)
    killed_at = time.monotonic()
    live.remove(leader)
    # The first write acknowledged after the kill marks the new leader serving.
    before = len(acknowledged)
    new_leader = wait_until(lambda: group.leader(live), 3 * ELECTION_TIMEOUT_MAX_S + 5, f"a new leader (seed {seed})")
    wait_until(lambda: len(acknowledged) > before, 3 * ELECTION_TIMEOUT_MAX_S, f"writes resume (seed {seed})")
    failover_s = time.monotonic() - killed_at
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert failover_s < 3 * ELECTION_TIMEOUT_MAX_S, f"failover took {failover_s:.2f} s (seed {seed})"

    client = group.client(new_leader)
    keys = sorted(acknowledged)
    values = client.mget(keys)
    lost = [(key, acknowledged[key]) for key, value in zip(keys, values) if value != acknowledged[key].encode()]
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]} (seed {seed})\n{group.log_tails()}"

    # The old leader restarts on its data dir with no other flags changed and rejoins as a follower.
    group.start(leader)
    wait_until(lambda: (group.info(leader) or {}).get("chorus_role") == "follower", 20, "the old leader rejoins")
    leader_commit = client.info("persistence")["chorus_commit_index"]
    wait_until(
        lambda: group.client(leader).info("persistence")["chorus_applied_index"] >= leader_commit,
        20,
        "the old leader catches up",
    )
    print(f"seed {seed}: {len(acknowledged)} acknowledged writes, failover {failover_s:.2f} s")


def test_read_your_writes_on_a_follower_with_a_session_token(group):
    """A follower that missed a write (stopped while it committed on the other two) serves it to a
    READONLY client that carries the writer's session token: the read waits until the follower has
    applied the token's position."""
    leader = wait_until(lambda: group.leader(), 15, "a leader is elected")
    follower = next(i for i in group.ids if i != leader)
    writer = group.client(leader)
    assert writer.set("session-key", "v0") is True

    group.procs[follower].send_signal(signal.SIGSTOP)
    try:
        assert writer.set("session-key", "v1") is True, "a quorum of two commits the write"
        token = writer.execute_command("CHORUS.TOKEN")
    finally:
        group.procs[follower].send_signal(signal.SIGCONT)
    assert token >= 2

    reader = group.client(follower)
    assert reader.execute_command("READONLY") in (True, b"OK")
    assert reader.execute_command("CHORUS.SESSION", token) in (True, b"OK")
    assert reader.get("session-key") == b"v1", "read-your-writes across replicas with the token"
    # Monotonic reads: the follower's token never goes below what the session has seen.
    assert reader.execute_command("CHORUS.TOKEN") >= token
    with pytest.raises(redis.exceptions.ReadOnlyError, match="read only replica"):
        reader.set("session-key", "from-a-follower")
    # Without READONLY a follower redirects reads to the leader.
    plain = group.client(follower)
    with pytest.raises(redis.exceptions.ResponseError, match="MOVED"):
        plain.get("session-key")


def test_role_wait_and_chorus_status_describe_the_group(group):
    leader = wait_until(lambda: group.leader(), 15, "a leader is elected")
    follower = next(i for i in group.ids if i != leader)
    client = group.client(leader)
    assert client.set("k", "v") is True
    # WAIT: both followers have the write durable within the timeout.
    assert client.execute_command("WAIT", 2, 5000) == 2
    role = client.execute_command("ROLE")
    assert role[0] == b"master"
    assert sorted(int(entry[1]) for entry in role[2]) == sorted(
        group.client_ports[i] for i in group.ids if i != leader
    )
    follower_role = group.client(follower).execute_command("ROLE")
    assert follower_role[0] == b"slave"
    assert follower_role[2] == group.client_ports[leader]
    info = client.info("replication")
    assert info["connected_slaves"] == 2
    table = subprocess.run(
        [str(chorus_bin()), "status", "--addr", ",".join(f"127.0.0.1:{group.client_ports[i]}" for i in group.ids)],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    roles = [line.split()[2] for line in table.splitlines()[1:] if line.strip()]
    assert sorted(roles) == ["follower", "follower", "leader"], table


def test_an_async_failover_discards_acknowledged_writes_into_the_rollback_file(tmp_path):
    """Under `async` a write is acknowledged once the leader alone has it durable. Killing both
    followers, writing, killing the leader and restarting the followers (who elect a new leader
    without those writes) discards acknowledged writes; when the old leader rejoins they must not
    vanish silently: its rollback file lists them."""
    group = Group(tmp_path, durability="async")
    group.start_all()
    try:
        leader = wait_until(lambda: group.leader(), 15, "a leader is elected")
        followers = [i for i in group.ids if i != leader]
        client = group.client(leader)
        assert client.set("kept", "1") is True
        wait_until(lambda: all((group.info(i) or {}).get("chorus_commit_index", 0) >= 1 for i in followers), 10,
                   "followers have the first write")
        # The followers die (their logs end at the first write); the leader, alone, still leads
        # until check-quorum notices, and under async acknowledges writes on its own fsync.
        for follower in followers:
            group.kill(follower)
        acknowledged = [f"doomed-{i}" for i in range(5)]
        for key in acknowledged:
            assert client.set(key, "v") is True, "async acknowledges on the leader's own fsync"
        group.kill(leader)
        for follower in followers:
            group.start(follower)
        new_leader = wait_until(lambda: group.leader(followers), 20, "the followers elect a new leader")
        assert group.client(new_leader).set("after", "1") is True
        assert group.client(new_leader).get("doomed-0") is None, "the new leader never had the writes"

        group.start(leader)
        rollback = tmp_path / f"data{leader}" / "rollback.log"
        wait_until(lambda: rollback.exists() and rollback.stat().st_size > 0, 20, "the rollback file is written")
        content = rollback.read_bytes()
        for key in acknowledged:
            assert key.encode() in content, f"{key} is missing from the rollback file"
        info = wait_until(lambda: group.info(leader), 10, "the old leader answers INFO")
        assert info["chorus_discarded_entries"] >= len(acknowledged)
    finally:
        group.stop_all()


def test_a_leader_transfer_under_write_load_fails_no_client_write(group):
    """CHORUS.LEADER TRANSFER hands leadership over for a rolling restart: writers that follow
    redirects see no write fail, and every acknowledged write is on the new leader."""
    leader = wait_until(lambda: group.leader(), 15, "a leader is elected")
    target = next(i for i in group.ids if i != leader)
    acknowledged, failures = {}, []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(worker):
        sequence = 0
        while not stop.is_set():
            key, value = f"t{worker}:{sequence}", f"{worker}-{sequence}"
            deadline = time.monotonic() + 10
            while True:
                try:
                    outcome = write_anywhere(group, key, value, list(group.ids))
                except redis.exceptions.RedisError as error:
                    with lock:
                        failures.append((key, repr(error)))
                    break
                if outcome:
                    with lock:
                        acknowledged[key] = value
                    break
                if time.monotonic() > deadline:
                    with lock:
                        failures.append((key, "not acknowledged within 10 s"))
                    break
                time.sleep(0.01)
            sequence += 1

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(6)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acknowledged) >= 200, 30, "writes flowing")
    reply = group.client(leader).execute_command("CHORUS.LEADER", "TRANSFER", target)
    assert f"node {target}".encode() in reply
    wait_until(lambda: group.leader() == target, 15, f"node {target} leads")
    before = len(acknowledged)
    wait_until(lambda: len(acknowledged) >= before + 200, 30, "writes flow through the new leader")
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not failures, f"client writes failed during the transfer: {failures[:5]}"
    keys = sorted(acknowledged)
    values = group.client(target).mget(keys)
    assert all(value == acknowledged[key].encode() for key, value in zip(keys, values))
