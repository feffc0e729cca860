"""Leaderless mode across real processes: any node takes reads and writes (writes forwarded to a
home replica when needed), siblings and contexts through CHORUS.GETALL / CHORUS.PUT, and, after a
kill -9 under write load, hinted handoff plus anti-entropy bringing the restarted node to the same
state as the others (compared per slot with CHORUS.DIGEST SLOTS, the Merkle leaves anti-entropy
compares). The leaderless counters are checked on the admin port's Prometheus /metrics.

CHORUS_TEST_SEED=<n> replays a run's random choices."""

import os
import random
import threading

import pytest
import redis

from conftest import wait_until
from test_replication import Group

SEED = int(os.environ.get("CHORUS_TEST_SEED", random.randrange(1 << 32)))


@pytest.fixture
def rng():
    print(f"CHORUS_TEST_SEED={SEED}")
    return random.Random(SEED)


class LeaderlessGroup(Group):
    """A Group whose nodes also serve the admin port (Prometheus /metrics) and debug commands."""

    def __init__(self, tmp_path, extra_args):
        super().__init__(tmp_path, extra_args=[*extra_args, "--enable-debug-commands"], admin=True)


def leaderless_group(tmp_path, quorum="3/2/2", anti_entropy_ms=300):
    args = ["--mode", "leaderless", "--leaderless-quorum", quorum, "--anti-entropy-interval-ms", str(anti_entropy_ms)]
    group = LeaderlessGroup(tmp_path, args)
    group.start_all()
    for node_id in group.ids:
        wait_until(lambda: all_up(group, node_id), 30, f"node {node_id} to serve and see every peer up")
    return group


def ll_info(group, node_id):
    try:
        return group.client(node_id).info("leaderless")
    except redis.exceptions.RedisError:
        return None


def all_up(group, node_id):
    """The node serves, has heard from every peer since it started, and marks none down."""
    info = ll_info(group, node_id)
    if info is None:
        return False
    return str(info.get("chorus_ll_peers_down", "")) == "" and str(info.get("chorus_ll_peers_unheard", "")) == ""


def quorum_client(group, node_id, *quorum):
    client = group.client(node_id, single_connection_client=True)
    if quorum:
        assert client.execute_command("CHORUS.QUORUM", *quorum) == b"OK"
    return client


def digest(group, node_id, peer=None):
    args = ["CHORUS.DIGEST"] + ([peer] if peer is not None else [])
    try:
        return group.client(node_id).execute_command(*args)
    except redis.exceptions.RedisError:
        return None


def slot_digests(group, node_id, peer):
    """{slot: digest} over the slots `node_id` and `peer` are both home replicas of (and that
    `node_id` holds keys in), or None if the node does not answer."""
    try:
        pairs = group.client(node_id).execute_command("CHORUS.DIGEST", "SLOTS", peer)
    except redis.exceptions.RedisError:
        return None
    return {int(slot): digest for slot, digest in pairs}


def key_slot(key):
    """Redis Cluster's slot of a key without a hash tag: CRC16 (XMODEM) modulo 16384."""
    crc = 0
    for byte in key:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc % 16384


assert [key_slot(b"foo"), key_slot(b"bar"), key_slot(b"hello")] == [12182, 5061, 866]  # CLUSTER KEYSLOT


def slot_disagreements(group):
    """Per slot, the digests of its replicas wherever two replicas of it disagree (a slot one
    replica holds keys in and the other does not counts): {slot: {node: digest or None}}."""
    differing = {}
    for a in group.ids:
        for b in group.ids:
            if a < b:
                ours, theirs = slot_digests(group, a, b), slot_digests(group, b, a)
                if ours is None or theirs is None:
                    return None
                for slot in set(ours) | set(theirs):
                    if ours.get(slot) != theirs.get(slot):
                        differing.setdefault(slot, {}).update({a: ours.get(slot), b: theirs.get(slot)})
    return differing


@pytest.fixture
def cluster(tmp_path):
    group = leaderless_group(tmp_path)
    yield group
    group.stop_all()


def test_any_node_serves_plain_redis_commands(cluster):
    c1, c2, c3 = (cluster.client(i) for i in (1, 2, 3))
    assert c1.set("k", "v1") is True
    assert c2.get("k") == b"v1"
    assert c3.set("k", "v2") is True
    assert c1.get("k") == b"v2"
    # Through one node, INCR answers are exact (that node's copy has every earlier increment).
    assert c1.incr("n") == 1
    assert c1.incrby("n", 10) == 11
    assert c1.decr("n") == 10
    # Through different nodes too: the replica acknowledging an increment sends its counter back,
    # and with w = 2 of 3 it holds every increment acknowledged before (the coordinator's own copy
    # may lack them), so each answer counts them all.
    assert c2.decrby("n", 3) == 7
    assert c3.incrby("n", 100) == 107
    assert c1.get("n") == b"107"
    assert c2.incr("n") == 108
    assert c1.set("i", "7") and c1.incr("i") == 8
    with pytest.raises(redis.exceptions.ResponseError, match="not an integer"):
        c3.incr("k")
    assert c2.delete("k", "missing") == 1
    assert c3.get("k") is None
    with pytest.raises(redis.exceptions.ResponseError, match="not supported in leaderless mode"):
        c1.execute_command("APPEND", "k", "x")
    with pytest.raises(redis.exceptions.ResponseError, match="not supported in leaderless mode"):
        c1.set("k", "v", ex=10)
    info = c1.info("replication")
    assert info["chorus_mode"] == "leaderless"


def test_concurrent_puts_become_siblings_and_a_put_with_the_context_collapses_them(cluster):
    c1, c2, c3 = (cluster.client(i) for i in (1, 2, 3))
    # Two blind writes (empty context) through different nodes are concurrent: both are kept.
    assert c1.execute_command("CHORUS.PUT", "s", "a", "") == b"OK"
    assert c2.execute_command("CHORUS.PUT", "s", "b", "") == b"OK"
    values, context = wait_until(
        lambda: (lambda r: r if len(r[0]) == 2 else None)(c3.execute_command("CHORUS.GETALL", "s")),
        10,
        "both siblings to be visible",
    )
    assert sorted(values) == [b"a", b"b"]
    assert c3.get("s") in (b"a", b"b")  # a deterministic choice among them
    # Each blind write is on at least two of the three nodes, so one node holds both siblings.
    wait_until(
        lambda: any(cluster.metrics(i)["chorus_ll_keys_with_siblings"] >= 1 for i in cluster.ids),
        10,
        "a node to report a key with siblings",
    )
    assert max(cluster.metrics(i)["chorus_ll_siblings_max"] for i in cluster.ids) >= 2
    # A write with the context read supersedes both.
    assert c3.execute_command("CHORUS.PUT", "s", "merged", context) == b"OK"
    values, _ = c1.execute_command("CHORUS.GETALL", "s")
    assert values == [b"merged"]
    with pytest.raises(redis.exceptions.ResponseError, match="invalid context"):
        c1.execute_command("CHORUS.PUT", "s", "x", "not-hex")


def test_digest_forms_and_bad_arguments(cluster):
    c1 = cluster.client(1)
    assert c1.set("dg", "v") is True
    slots = c1.execute_command("CHORUS.DIGEST", "SLOTS")
    assert [slot for slot, _ in slots] == sorted(slot for slot, _ in slots)
    assert key_slot(b"dg") in {slot for slot, _ in slots}
    assert all(len(digest) == 16 for _, digest in slots)
    assert len(c1.execute_command("CHORUS.DIGEST")) == 16
    # n = 3 on 3 nodes: node 1 shares every slot with node 2.
    assert c1.execute_command("CHORUS.DIGEST", "slots", 2) == slots
    for args, error in [
        (["SLOTS", "x"], "invalid node id"),
        (["x"], "invalid node id"),
        (["SLOTS", 9], "not a member"),
        (["SLOTS", 1], "shares every slot with itself"),
        (["SLOTS", 2, 3], "syntax"),
    ]:
        with pytest.raises(redis.exceptions.ResponseError, match=error):
            c1.execute_command("CHORUS.DIGEST", *args)
    assert c1.ping()


def test_per_connection_quorum_and_forwarding_to_a_home_replica(cluster, rng):
    # n=1: each key has one home replica, so most writes arrive at a node that must forward them.
    clients = {i: quorum_client(cluster, i, 1, 1, 1) for i in cluster.ids}
    assert clients[1].execute_command("CHORUS.QUORUM") == [1, 1, 1]
    keys = [f"fwd{i}" for i in range(30)]
    for key in keys:
        assert clients[rng.choice(cluster.ids)].set(key, key) is True
    for key in keys:
        assert clients[rng.choice(cluster.ids)].get(key) == key.encode()
    forwarded = sum(int(ll_info(cluster, i)["chorus_ll_forwarded"]) for i in cluster.ids)
    assert forwarded > 0
    with pytest.raises(redis.exceptions.ResponseError, match="invalid quorum"):
        clients[1].execute_command("CHORUS.QUORUM", 3, 4, 1)
    # More replicas than the configured n would put writes where anti-entropy never looks.
    with pytest.raises(redis.exceptions.ResponseError, match="n=4 is above the configured n=3"):
        clients[1].execute_command("CHORUS.QUORUM", 4, 1, 1)
    assert clients[1].execute_command("CHORUS.QUORUM") == [1, 1, 1], "a refused setting changes nothing"
    assert clients[1].execute_command("CHORUS.QUORUM", "DEFAULT") == b"OK"
    assert clients[1].execute_command("CHORUS.QUORUM") == [3, 2, 2]


def test_a_read_repairs_a_replica_that_missed_writes_and_metrics_count_it(tmp_path):
    # Anti-entropy is kept out of the way (an hour): only read repair can bring node 3 along.
    group = leaderless_group(tmp_path, quorum="3/2/2", anti_entropy_ms=3_600_000)
    try:
        assert group.client(3).execute_command("CHORUS.DEBUG", "ISOLATE", "ON") in (True, b"OK")
        writer_client = group.client(1)
        keys = [f"rr{i}" for i in range(10)]
        for key in keys:
            assert writer_client.set(key, key) is True  # w = 2: nodes 1 and 2
        assert group.client(3).execute_command("CHORUS.DEBUG", "ISOLATE", "OFF") in (True, b"OK")
        for node_id in group.ids:
            wait_until(lambda: all_up(group, node_id), 30, f"node {node_id} to see every peer up")
        assert group.metrics(3)["chorus_ll_read_repairs_total"] == 0
        # r = 1 through node 3 answers from its own copy at once: stale. The read still waits for
        # the others' replies, and repairs node 3's copy with what they had.
        local = quorum_client(group, 3, 3, 1, 1)
        assert [local.get(key) for key in keys] == [None] * len(keys)
        wait_until(
            lambda: [local.get(key) for key in keys] == [key.encode() for key in keys],
            10,
            "read repair to bring node 3's copy up to date",
        )
        assert group.metrics(3)["chorus_ll_read_repairs_total"] >= len(keys)
        assert int(ll_info(group, 3)["chorus_ll_read_repairs"]) >= len(keys)
        assert group.metrics(3)["chorus_ll_anti_entropy_keys_received_total"] == 0
        status = group.status(3)
        assert (status["mode"], status["quorum"], status["peers_down"]) == ("leaderless", {"n": 3, "w": 2, "r": 2}, [])
        assert status["keys"] >= len(keys)
    finally:
        group.stop_all()


def writer(group, node_ids, prefix, stop, acked, counts, rng_seed):
    """SETs increasing values to a few keys through `node_ids` in turn until `stop`; records the
    last acknowledged value of each key, and counts acknowledged writes in `counts[prefix]`."""
    rng = random.Random(rng_seed)
    clients = {i: quorum_client(group, i) for i in node_ids}
    sequence = 0
    while not stop.is_set():
        sequence += 1
        key = f"{prefix}{rng.randrange(200)}"
        node_id = node_ids[sequence % len(node_ids)]
        try:
            if clients[node_id].set(key, sequence):
                acked[key] = max(acked.get(key, 0), sequence)
                counts[prefix] = counts.get(prefix, 0) + 1
        except redis.exceptions.RedisError:
            pass  # a write that timed out, or a node that went away: outcome unknown


def converged(group, pairs=None):
    """Every pair of nodes agrees on the slots they share, slot by slot (no hints left anywhere)."""
    for node_id in group.ids:
        info = ll_info(group, node_id)
        if info is None or int(info["chorus_ll_hints"]) != 0:
            return False
    return slot_disagreements(group) == {}


def assert_every_slot_agrees(group, acked):
    """Every slot a write went to is held, with one digest, by the replicas of it that were
    compared; the Merkle roots over shared slots agree too."""
    assert slot_disagreements(group) == {}
    held = set()
    for a in group.ids:
        for b in group.ids:
            if a != b:
                held |= set(slot_digests(group, a, b))
    written = {key_slot(key.encode()) for key in acked}
    assert written <= held, f"slots written but held by no pair of replicas: {sorted(written - held)[:10]}"
    for a in group.ids:
        for b in group.ids:
            if a < b:
                assert digest(group, a, b) == digest(group, b, a), (a, b)


def kill_under_load_then_restart(group, rng, before_restart=None):
    stop = threading.Event()
    acked = {}
    counts = {}
    threads = [
        threading.Thread(target=writer, args=(group, [1, 2], "k", stop, acked, counts, rng.randrange(1 << 30))),
        threading.Thread(target=writer, args=(group, [2, 1], "j", stop, acked, counts, rng.randrange(1 << 30))),
    ]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(acked) >= 50, 30, "writes acknowledged before the kill")
        group.kill(3)
        before = len(acked)
        wait_until(lambda: int(ll_info(group, 1)["chorus_ll_peer_down_events"]) >= 1, 10, "node 3 marked down")
        count = sum(counts.values())
        wait_until(lambda: sum(counts.values()) > count + 400, 60, "writes acknowledged while node 3 is down")
        print(f"writes acknowledged: {count} before node 3 was marked down, {sum(counts.values())} in all")
        assert len(acked) >= before
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    if before_restart is not None:
        before_restart()
    group.start(3)
    wait_until(lambda: all_up(group, 3), 30, "node 3 back and seeing its peers")
    return acked


def test_kill_9_under_load_then_anti_entropy_converges(tmp_path, rng):
    group = leaderless_group(tmp_path, quorum="3/2/2", anti_entropy_ms=300)
    try:
        acked = kill_under_load_then_restart(group, rng)
        wait_until(lambda: converged(group), 60, "every pair of nodes to agree (anti-entropy)", interval_s=0.2)
        assert_every_slot_agrees(group, acked)
        # n = 3 on 3 nodes: every node holds every key, and the whole stores agree.
        roots = {digest(group, i) for i in group.ids}
        assert len(roots) == 1, roots
        rounds = sum(int(ll_info(group, i)["chorus_ll_anti_entropy_rounds"]) for i in group.ids)
        received = int(ll_info(group, 3)["chorus_ll_anti_entropy_keys_received"])
        repairs = sum(int(ll_info(group, i)["chorus_ll_read_repairs"]) for i in group.ids)
        print(f"anti-entropy rounds {rounds}, keys node 3 received {received}, read repairs {repairs}")
        assert received > 0
        # The same counters on /metrics (they restarted with node 3, so it got them since).
        metrics = group.metrics(3)
        assert metrics["chorus_ll_anti_entropy_keys_received_total"] >= received > 0
        assert metrics["chorus_ll_anti_entropy_rounds_total"] > 0
        assert sum(group.metrics(i)["chorus_ll_anti_entropy_keys_sent_total"] for i in (1, 2)) > 0
        # Node 3's own copy (r = 1 answers from the local copy first) has every acknowledged write.
        local = quorum_client(group, 3, 3, 1, 1)
        for key, value in acked.items():
            assert int(local.get(key)) >= value, key
    finally:
        group.stop_all()


def test_kill_9_under_load_then_hinted_handoff_and_anti_entropy_converge(tmp_path, rng):
    # n = 2 on 3 nodes: while node 3 is down, the third node stands in for it and keeps hints.
    group = leaderless_group(tmp_path, quorum="2/2/1", anti_entropy_ms=300)

    def crash_the_fallbacks():
        # The fallbacks hold hints for node 3, and their metrics say so.
        for node_id in (1, 2):
            metrics = group.metrics(node_id)
            assert metrics["chorus_ll_hints"] == int(ll_info(group, node_id)["chorus_ll_hints"])
            assert metrics["chorus_ll_hints_stored_total"] >= metrics["chorus_ll_hints"] > 0, metrics
        # Hints are in the store log too: a fallback killed while holding them still has them.
        for node_id in (1, 2):
            held = int(ll_info(group, node_id)["chorus_ll_hints"])
            group.kill(node_id)
            group.start(node_id)
            wait_until(lambda: ll_info(group, node_id) is not None, 30, f"node {node_id} back")
            assert int(ll_info(group, node_id)["chorus_ll_hints"]) == held
        assert sum(int(ll_info(group, i)["chorus_ll_hints"]) for i in (1, 2)) > 0

    try:
        acked = kill_under_load_then_restart(group, rng, before_restart=crash_the_fallbacks)
        wait_until(lambda: converged(group), 60, "hints handed off and every pair of nodes agreeing", interval_s=0.2)
        assert_every_slot_agrees(group, acked)
        # (counters restart with the process: the fallbacks were restarted holding their hints)
        delivered = sum(int(ll_info(group, i)["chorus_ll_hints_delivered"]) for i in group.ids)
        handed = int(ll_info(group, 3)["chorus_ll_handoffs_received"])
        print(f"hints delivered after the fallbacks' restart {delivered}, handoffs node 3 received {handed}")
        assert delivered > 0 and handed > 0
        metrics = {i: group.metrics(i) for i in group.ids}
        assert sum(metrics[i]["chorus_ll_hints_delivered_total"] for i in group.ids) >= delivered
        assert metrics[3]["chorus_ll_handoffs_received_total"] >= handed
        assert all(metrics[i]["chorus_ll_hints"] == 0 for i in group.ids)
        # Every acknowledged write is readable, with r = 2 (both home replicas), through any node.
        readers = {i: quorum_client(group, i, 2, 2, 2) for i in group.ids}
        for key, value in acked.items():
            assert int(readers[rng.choice(group.ids)].get(key)) >= value, key
    finally:
        group.stop_all()


def test_restart_keeps_acknowledged_writes(tmp_path):
    group = leaderless_group(tmp_path)
    try:
        client = group.client(1)
        for i in range(20):
            assert client.set(f"d{i}", i)
        for node_id in group.ids:
            group.kill(node_id)
        for node_id in group.ids:
            group.start(node_id)
        for node_id in group.ids:
            wait_until(lambda: all_up(group, node_id), 30, f"node {node_id} back")
        for node_id in group.ids:
            local = quorum_client(group, node_id, 3, 1, 1)
            # w = 2: at least two of the three copies have each write; a read with r = 3 sees it.
            full = quorum_client(group, node_id, 3, 1, 3)
            for i in range(20):
                assert full.get(f"d{i}") == str(i).encode()
            del local
    finally:
        group.stop_all()


def stale_read_rate(group, w, r, rounds=300):
    """Writes a fresh key through node 1 with `w`, then at once reads it through node 2 with `r`:
    the fraction of reads that miss the acknowledged write."""
    writer_client = quorum_client(group, 1, 3, w, 1)
    reader_client = quorum_client(group, 2, 3, 1, r)
    stale = 0
    for i in range(rounds):
        key = f"stale:{w}{r}:{i}"
        assert writer_client.set(key, i) is True
        if reader_client.get(key) != str(i).encode():
            stale += 1
    return stale / rounds


def test_stale_reads_only_below_overlapping_quorums(cluster):
    rates = {(w, r): stale_read_rate(cluster, w, r) for (w, r) in [(1, 1), (2, 2), (3, 1)]}
    print("stale-read rate (n=3, write via node 1, read via node 2 right after):", rates)
    # r + w > n: every read quorum meets every write quorum, so no read misses an acknowledged write.
    assert rates[(2, 2)] == 0
    assert rates[(3, 1)] == 0
