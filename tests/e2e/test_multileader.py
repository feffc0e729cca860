"""Multi-leader mode across real processes: 2 datacenters x 3 nodes on loopback, each datacenter a
Raft group taking local writes, their leaders streaming committed changes to each other.

- partition the datacenters (CHORUS.DEBUG DC-PARTITION), write conflicting values and increments on
  both sides, heal: both sides converge to the same values and counts, under each conflict policy;
- a leader change in either datacenter while changes stream (a transfer, then a kill -9) resumes
  the stream with no change lost or applied twice: the counters' sums prove it;
- a whole datacenter stopped while the other writes past its journal catches up (a bootstrap)
  when it returns.

CHORUS_TEST_SEED=<n> replays a run's random choices (printed on failure)."""

import os
import random
import signal
import threading

import pytest
import redis

from conftest import wait_until
from test_replication import Group

SEED = int(os.environ.get("CHORUS_TEST_SEED", random.randrange(1 << 32)))
CONVERGE_S = 30


@pytest.fixture
def rng():
    print(f"CHORUS_TEST_SEED={SEED}")
    return random.Random(SEED)


class MultiDc(Group):
    """Datacenters dc1, dc2, ... of `per_dc` nodes each: ids go dc by dc (dc1 = 1..per_dc)."""

    def __init__(self, tmp_path, datacenters=2, per_dc=3, extra_args=()):
        super().__init__(
            tmp_path,
            size=datacenters * per_dc,
            extra_args=["--mode", "multi-leader", "--enable-debug-commands", *extra_args],
            admin=True,
        )
        self.per_dc = per_dc
        self.dc_names = [f"dc{d}" for d in range(1, datacenters + 1)]

    def dc_of(self, node_id):
        return self.dc_names[(node_id - 1) // self.per_dc]

    def nodes(self, dc):
        return [i for i in self.ids if self.dc_of(i) == dc]

    def node_args(self, node_id):
        return ["--datacenter", self.dc_of(node_id)]

    def leader(self, dc):
        """The node of `dc` that leads it and serves, once every live node of it agrees."""
        return super().leader(among=[i for i in self.nodes(dc) if self.procs[i].poll() is None])

    def wait_leader(self, dc):
        return wait_until(lambda: self.leader(dc), 30, f"{dc} to elect a leader (seed {SEED})")

    def streaming(self, dc, other):
        """Whether `dc`'s leader streams to `other` (its link is up)."""
        leader = self.leader(dc)
        info = leader and self.info(leader, "multileader")
        return bool(info) and info.get(f"chorus_ml_dc_{other}", {}).get("link") == "streaming"

    def partition(self, on):
        """Cuts dc1 off from every other datacenter (and back), on every node of both sides."""
        flag = "ON" if on else "OFF"
        for node_id in self.ids:
            if self.procs[node_id].poll() is not None:
                continue
            own = self.dc_of(node_id)
            for dc in self.dc_names:
                if dc != own and "dc1" in (dc, own):
                    assert self.client(node_id).execute_command("CHORUS.DEBUG", "DC-PARTITION", dc, flag) == b"OK"

    def stop(self, node_id):
        self.procs[node_id].send_signal(signal.SIGTERM)
        assert self.procs[node_id].wait(timeout=30) == 0, f"node {node_id} did not stop cleanly"


def make_cluster(tmp_path, *extra_args):
    cluster = MultiDc(tmp_path, extra_args=extra_args)
    cluster.start_all()
    for dc in cluster.dc_names:
        cluster.wait_leader(dc)
    for dc in cluster.dc_names:
        for other in cluster.dc_names:
            if other != dc:
                wait_until(lambda: cluster.streaming(dc, other), 30, f"{dc} to stream to {other} (seed {SEED})")
    return cluster


def on_leader(cluster, dc, *command):
    """Runs a command on `dc`'s leader, following leadership changes (MOVED / TRYAGAIN / a dead
    node). Returns (reply, definite): definite is False when the outcome is unknown."""
    for _ in range(400):
        leader = cluster.leader(dc)
        if leader is None:
            wait_until(lambda: cluster.leader(dc), 30, f"{dc} to elect a leader (seed {SEED})")
            continue
        try:
            return cluster.client(leader).execute_command(*command), True
        except redis.exceptions.ResponseError as error:
            text = str(error)
            if text.startswith("MOVED") or text.startswith("TRYAGAIN"):
                continue
            if "replaced by a new leader" in text:
                return None, False
            raise
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            return None, False
    raise AssertionError(f"{dc} never served {command} (seed {SEED})")


def read_all(cluster, dc, keys):
    leader = cluster.leader(dc)
    if leader is None:
        return None
    try:
        return [cluster.client(leader).get(key) for key in keys]
    except redis.exceptions.RedisError:
        return None


def wait_converged(cluster, keys, expected=None):
    """Until every datacenter's leader reads the same values for `keys` (and, if given, exactly
    `expected`); returns them."""
    def same():
        views = [read_all(cluster, dc, keys) for dc in cluster.dc_names]
        if any(view is None for view in views) or any(view != views[0] for view in views):
            return None
        if expected is not None and views[0] != expected:
            return None
        return views[0]

    def describe():
        return {dc: read_all(cluster, dc, keys) for dc in cluster.dc_names}

    try:
        return wait_until(same, CONVERGE_S, "the datacenters to converge")
    except AssertionError:
        raise AssertionError(f"not converged (seed {SEED}): {describe()} expected {expected}\n{cluster.log_tails()}")


@pytest.mark.parametrize("policy", ["lww", "siblings"])
def test_partitioned_datacenters_take_conflicting_writes_and_converge_after_healing(tmp_path, rng, policy):
    cluster = make_cluster(tmp_path, "--conflict-policy", policy)
    try:
        dc1, dc2 = cluster.dc_names
        assert on_leader(cluster, dc1, "SET", "k", "base") == (True, True)
        wait_converged(cluster, ["k"], [b"base"])

        cluster.partition(True)
        sums = {"c": 0}
        for dc, value in ((dc1, "from-dc1"), (dc2, "from-dc2")):
            assert on_leader(cluster, dc, "SET", "k", value) == (True, True)
            assert on_leader(cluster, dc, "SET", f"only-{dc}", dc) == (True, True)
            for _ in range(rng.randint(5, 20)):
                delta = rng.randint(-5, 50)
                reply, definite = on_leader(cluster, dc, "INCRBY", "c", delta)
                assert definite, f"an increment's outcome is unknown (seed {SEED})"
                sums["c"] += delta
        # The partition holds: each side sees only its own writes.
        assert read_all(cluster, dc1, ["k", "only-dc2"]) == [b"from-dc1", None]
        assert read_all(cluster, dc2, ["k", "only-dc1"]) == [b"from-dc2", None]
        wait_until(lambda: not cluster.streaming(dc1, dc2), 30, "dc1's link to dc2 to go down")

        cluster.partition(False)
        keys = ["k", "only-dc1", "only-dc2", "c"]
        values = wait_converged(cluster, keys)
        assert values[0] in (b"from-dc1", b"from-dc2"), values
        assert values[1:] == [b"dc1", b"dc2", str(sums["c"]).encode()], f"every increment counts once (seed {SEED})"

        for dc in cluster.dc_names:
            leader = cluster.leader(dc)
            client = cluster.client(leader)
            ml = client.info("multileader")
            assert ml["chorus_ml_policy"] == policy
            assert ml["chorus_ml_conflicts_resolved"] >= 1, ml
            assert ml["chorus_ml_held_back"] == 0
            status = cluster.status(leader)
            assert (status["mode"], status["role"], status["datacenter"]) == ("multi-leader", "leader", dc), status
            metrics = cluster.metrics(leader)
            assert metrics["chorus_ml_conflicts_resolved_total"] == ml["chorus_ml_conflicts_resolved"], metrics
            other = next(name for name in cluster.dc_names if name != dc)
            assert metrics[f'chorus_ml_link_up{{datacenter="{other}"}}'] == 1
            assert metrics[f'chorus_ml_replication_lag_changes{{datacenter="{other}"}}'] >= 0
            conflicts = client.execute_command("CHORUS.CONFLICTS", 10)
            assert any(record[0] == b"k" for record in conflicts), conflicts
            versions = client.execute_command("CHORUS.VERSIONS", "k")
            shown = sorted(version[3] for version in versions)
            if policy == "siblings":
                assert shown == [b"from-dc1", b"from-dc2"], f"both writes kept as siblings: {versions}"
                # A local write supersedes every sibling this datacenter holds.
            else:
                assert len(versions) == 1 and versions[0][3] == values[0], versions
        if policy == "siblings":
            assert on_leader(cluster, dc2, "SET", "k", "merged") == (True, True)
            wait_converged(cluster, ["k"], [b"merged"])
            for dc in cluster.dc_names:
                client = cluster.client(cluster.leader(dc))
                assert [v[3] for v in client.execute_command("CHORUS.VERSIONS", "k")] == [b"merged"]
        # Followers apply the same log: each node of each datacenter ends with the same keys.
        for node_id in cluster.ids:
            wait_until(
                lambda: (cluster.info(node_id, "keyspace") or {}).get("db0", {}).get("keys") == 4,
                CONVERGE_S,
                f"node {node_id} to apply every key",
            )
    finally:
        cluster.stop_all()


def test_a_leader_change_on_either_side_mid_stream_loses_and_duplicates_nothing(tmp_path, rng):
    cluster = make_cluster(tmp_path)
    try:
        dc1, dc2 = cluster.dc_names
        bounds = {dc: [0, 0] for dc in cluster.dc_names}  # acknowledged sum, unknown-outcome sum
        stop = threading.Event()
        errors = []

        def writer(dc, seed):
            local = random.Random(seed)
            try:
                while not stop.is_set():
                    delta = local.randint(1, 9)
                    _, definite = on_leader(cluster, dc, "INCRBY", "c", delta)
                    bounds[dc][0 if definite else 1] += delta
            except Exception as error:  # reported below
                errors.append(repr(error))

        threads = [threading.Thread(target=writer, args=(dc, SEED + n), daemon=True) for n, dc in enumerate(cluster.dc_names)]
        for thread in threads:
            thread.start()
        wait_until(lambda: bounds[dc1][0] > 200 and bounds[dc2][0] > 200, 60, "writes on both sides")

        # The receiving side changes leader (a transfer), then the sending side loses its leader to
        # a kill -9 while both keep writing.
        old = cluster.leader(dc2)
        assert cluster.client(old).execute_command("CHORUS.LEADER", "TRANSFER") is not None
        wait_until(lambda: cluster.leader(dc2) not in (None, old), 30, f"dc2's leadership to move (seed {SEED})")
        mark = dict((dc, bounds[dc][0]) for dc in cluster.dc_names)
        wait_until(lambda: all(bounds[dc][0] > mark[dc] + 100 for dc in cluster.dc_names), 60, "writes go on")
        victim = cluster.leader(dc1)
        cluster.kill(victim)
        wait_until(lambda: cluster.leader(dc1) not in (None, victim), 30, f"dc1 to elect a new leader (seed {SEED})")
        mark = dict((dc, bounds[dc][0]) for dc in cluster.dc_names)
        wait_until(lambda: all(bounds[dc][0] > mark[dc] + 100 for dc in cluster.dc_names), 60, "writes go on")
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors

        low = sum(acked for acked, _ in bounds.values())
        high = low + sum(unknown for _, unknown in bounds.values())

        def agreed():
            views = [read_all(cluster, dc, ["c"]) for dc in cluster.dc_names]
            if any(view is None for view in views) or views[0] != views[1]:
                return None
            value = int(views[0][0])
            return value if low <= value <= high else None

        try:
            wait_until(agreed, CONVERGE_S, "both datacenters to count every increment once")
        except AssertionError:
            views = {dc: read_all(cluster, dc, ["c"]) for dc in cluster.dc_names}
            raise AssertionError(f"counts {views}, expected in [{low}, {high}] (seed {SEED})\n{cluster.log_tails()}")
        # The killed node restarts and catches up with its datacenter.
        final = read_all(cluster, dc1, ["c"])
        assert final is not None
        cluster.start(victim)

        def caught_up():
            try:
                client = cluster.client(victim, single_connection_client=True)
                client.execute_command("READONLY")
                return client.get("c") == final[0]
            except redis.exceptions.RedisError:
                return False

        wait_until(caught_up, CONVERGE_S, "the restarted node to catch up")
    finally:
        cluster.stop_all()


def test_a_whole_datacenter_restarted_catches_up_even_past_the_journal(tmp_path, rng):
    cluster = make_cluster(tmp_path, "--journal-entries-max", "20")
    try:
        dc1, dc2 = cluster.dc_names
        assert on_leader(cluster, dc2, "SET", "before", "dc2") == (True, True)
        wait_converged(cluster, ["before"], [b"dc2"])
        for node_id in cluster.nodes(dc2):
            cluster.stop(node_id)
        written = {}
        total = 0
        for n in range(60):  # far more than the 20 changes the journal keeps: dc2 needs a bootstrap
            key = f"k{rng.randrange(1000)}"
            value = f"v{n}"
            assert on_leader(cluster, dc1, "SET", key, value) == (True, True)
            written[key] = value.encode()
            delta = rng.randint(1, 9)
            assert on_leader(cluster, dc1, "INCRBY", "c", delta)[1]
            total += delta
        wait_until(lambda: not cluster.streaming(dc1, dc2), 30, "dc1 to see dc2 gone")
        ml = cluster.info(cluster.leader(dc1), "multileader")
        assert ml["chorus_ml_dc_dc2"]["link"] in ("connecting", "unreachable"), ml

        for node_id in cluster.nodes(dc2):
            cluster.start(node_id)
        cluster.wait_leader(dc2)
        keys = sorted(written) + ["c", "before"]
        wait_converged(cluster, keys, [written[key] for key in sorted(written)] + [str(total).encode(), b"dc2"])
        ml1 = cluster.info(cluster.leader(dc1), "multileader")
        assert ml1["chorus_ml_dc_dc2"]["bootstraps_sent"] >= 1, ml1
        # And dc2 writes again, seen by dc1.
        assert on_leader(cluster, dc2, "INCRBY", "c", 1000) == (total + 1000, True)
        wait_converged(cluster, ["c"], [str(total + 1000).encode()])
    finally:
        cluster.stop_all()


@pytest.mark.parametrize("topology", ["star:dc1", "ring:dc1,dc2,dc3"])
def test_three_datacenters_forward_through_the_topology_and_route_around_a_dead_forwarder(tmp_path, topology):
    """3 datacenters of one node each. dc1 is the star's hub, and dc2 is dc1's successor in the
    ring: with it alive, a change reaches the third datacenter through it; killed, the others route
    around it; back, it catches up."""
    cluster = MultiDc(tmp_path, datacenters=3, per_dc=1, extra_args=["--topology", topology])
    cluster.start_all()
    try:
        dc1, dc2, dc3 = cluster.dc_names
        for dc in cluster.dc_names:
            cluster.wait_leader(dc)
        # A write in the datacenter that does not send straight to its target: in the star, dc2
        # sends to the hub only; in the ring dc1 sends to dc2 only.
        source, target = (dc2, dc3) if topology.startswith("star") else (dc1, dc3)
        forwarder = dc1 if topology.startswith("star") else dc2
        info = lambda dc: cluster.info(cluster.nodes(dc)[0], "multileader") or {}
        wait_until(lambda: cluster.streaming(source, forwarder), 30, f"{source} to stream to {forwarder}")
        routed = info(source)
        assert routed[f"chorus_ml_dc_{forwarder}"]["routed"] == 1, routed
        assert routed[f"chorus_ml_dc_{target}"]["routed"] == 0, f"{source} sends to {target} only through {forwarder}"
        assert on_leader(cluster, source, "SET", "through", "forwarder") == (True, True)
        assert on_leader(cluster, source, "INCRBY", "c", 5) == (5, True)
        wait_converged(cluster, ["through", "c"], [b"forwarder", b"5"])

        (dead,) = cluster.nodes(forwarder)
        cluster.kill(dead)
        wait_until(lambda: info(source).get(f"chorus_ml_dc_{target}", {}).get("routed") == 1, 30,
                   f"{source} to route around the dead {forwarder} (seed {SEED})")
        assert info(source)[f"chorus_ml_dc_{forwarder}"]["link"] == "unreachable"
        assert info(source)["chorus_ml_unreachable"] == forwarder, "the dead datacenter is reported"
        assert on_leader(cluster, source, "SET", "around", "direct") == (True, True)
        assert on_leader(cluster, target, "INCRBY", "c", 7) == (12, True)
        live = [dc for dc in cluster.dc_names if dc != forwarder]
        wait_until(lambda: all(read_all(cluster, dc, ["around", "c"]) == [b"direct", b"12"] for dc in live),
                   CONVERGE_S, f"the live datacenters to converge without {forwarder} (seed {SEED})")

        cluster.start(dead)
        cluster.wait_leader(forwarder)
        wait_converged(cluster, ["through", "around", "c"], [b"forwarder", b"direct", b"12"])
        for dc in cluster.dc_names:
            assert info(dc)["chorus_ml_held_back"] == 0
    finally:
        cluster.stop_all()
