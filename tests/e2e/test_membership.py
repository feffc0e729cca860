"""Membership and follower reads across real processes: a learner added to a loaded group catches
up (from a snapshot: the group compacts its log) and serves consistent reads with a session token;
read-your-writes holds across replicas with the token and visibly fails without it; a learner is
promoted and removed online."""

import os
import random
import threading

import pytest
import redis

from conftest import wait_until
from test_replication import Group, write_anywhere

SEED = int(os.environ.get("CHORUS_TEST_SEED", random.randrange(1 << 32)))


@pytest.fixture
def compacting_group(tmp_path):
    # A small checkpoint interval makes every node compact its log often, so a node added later
    # cannot be sent the log from the start and must be sent a snapshot.
    g = Group(tmp_path, extra_args=["--checkpoint-entries", "50", "--fsync", "never", "--enable-debug-commands"])
    g.start_all()
    yield g
    g.stop_all()


def member_list(client):
    return {int(row[0]): (row[1].decode(), row[2].decode()) for row in client.execute_command("CHORUS.MEMBER", "LIST")}


def applied_index(group, node_id):
    info = group.info(node_id)
    return int(info.get("chorus_applied_index", 0)) if info else 0


def test_a_learner_added_under_load_catches_up_from_a_snapshot_and_serves_token_reads(compacting_group):
    group = compacting_group
    print(f"CHORUS_TEST_SEED={SEED}")
    rng = random.Random(SEED)
    leader = wait_until(lambda: group.leader(), 20, "a leader is elected")
    writer = group.client(leader)
    for i in range(300):
        assert writer.set(f"before:{i}", str(i)) is True

    acknowledged = {}
    stop = threading.Event()

    def load():
        n = 0
        while not stop.is_set():
            key = f"during:{rng.randrange(200)}"
            value = f"{n}"
            if write_anywhere(group, key, value, [leader]) is True:
                acknowledged[key] = value
            n += 1

    loader = threading.Thread(target=load)
    loader.start()
    try:
        peer_addr = group.add_learner(4)
        reply = writer.execute_command("CHORUS.MEMBER", "ADD", 4, peer_addr, "LEARNER")
        assert reply in (True, b"OK"), reply
        assert member_list(writer)[4] == ("learner", peer_addr)
        wait_until(lambda: applied_index(group, 4) > 300, 30, "the learner applies the group's writes")
    finally:
        stop.set()
        loader.join()

    assert group.info(4)["chorus_member"] == "learner"
    assert any("installed a snapshot from the leader" in path.read_text() for path in group.logs[4]), \
        "the learner was sent a snapshot (the leader's log was compacted)\n" + group.log_tails()
    token = writer.execute_command("CHORUS.TOKEN")
    reader = group.client(4)
    assert reader.execute_command("READONLY") in (True, b"OK")
    assert reader.execute_command("CHORUS.SESSION", token) in (True, b"OK")
    wait_until(lambda: applied_index(group, 4) >= token, 30, "the learner reaches the writer's token")
    for i in range(300):
        assert reader.get(f"before:{i}") == str(i).encode()
    for key, value in acknowledged.items():
        assert reader.get(key) == value.encode(), f"{key} on the learner (seed {SEED})"
    assert reader.execute_command("CHORUS.TOKEN") >= token, "monotonic: the session never goes back"

    # Restarted after a crash with no flags beyond its addresses (not even --learner), the learner
    # rejoins from its data directory and catches up with writes made while it was down.
    group.kill(4)
    group.learners.discard(4)
    for i in range(100):
        assert writer.set(f"while-down:{i}", str(i)) is True
    group.start(4)
    token = writer.execute_command("CHORUS.TOKEN")
    wait_until(lambda: applied_index(group, 4) >= token, 30, "the restarted learner catches up")
    reader = group.client(4)
    reader.execute_command("READONLY")
    assert reader.get("while-down:99") == b"99"

    # A learner does not vote or count toward commits; promoted once caught up, it does.
    assert writer.execute_command("CHORUS.MEMBER", "PROMOTE", 4) in (True, b"OK")
    assert member_list(writer)[4][0] == "voter"
    wait_until(lambda: (group.info(4) or {}).get("chorus_member") == "voter", 10, "node 4 learns it votes")
    assert writer.set("after-promotion", "1") is True
    assert writer.execute_command("CHORUS.MEMBER", "REMOVE", 4) in (True, b"OK")
    assert 4 not in member_list(writer)
    assert writer.set("after-removal", "1") is True


def test_read_your_writes_across_replicas_needs_the_token(compacting_group):
    """A follower cut off from its peers (CHORUS.DEBUG ISOLATE) still answers READONLY reads from
    its state: without a token the writer's own write is missing there (stale read), with the token
    the read waits and refuses rather than return the stale value, and once the follower hears from
    the leader again the token read returns the write."""
    group = compacting_group
    leader = wait_until(lambda: group.leader(), 20, "a leader is elected")
    follower = next(i for i in group.ids if i != leader)
    writer = group.client(leader)
    assert writer.set("ryw", "old") is True
    wait_until(lambda: applied_index(group, follower) >= writer.execute_command("CHORUS.TOKEN"), 10,
               "the follower has the first write")
    cut_off = group.client(follower)
    assert cut_off.execute_command("CHORUS.DEBUG", "ISOLATE", "ON") in (True, b"OK")
    try:
        assert writer.set("ryw", "new") is True, "the leader and the other follower commit it"
        token = writer.execute_command("CHORUS.TOKEN")

        without_token = group.client(follower)
        without_token.execute_command("READONLY")
        assert without_token.get("ryw") == b"old", "without the token: a stale read, the write is missing"

        with_token = group.client(follower)
        with_token.execute_command("READONLY")
        with_token.execute_command("CHORUS.SESSION", token)
        with pytest.raises(redis.exceptions.ResponseError, match="TRYAGAIN"):
            with_token.get("ryw")
    finally:
        cut_off.execute_command("CHORUS.DEBUG", "ISOLATE", "OFF")
    with_token = group.client(follower)
    with_token.execute_command("READONLY")
    with_token.execute_command("CHORUS.SESSION", token)
    assert wait_until(lambda: with_token.get("ryw") == b"new", 10, "the token read returns the write")


def test_debug_commands_are_refused_unless_enabled(tmp_path):
    group = Group(tmp_path, size=1)
    group.start_all()
    try:
        client = group.client(1)
        wait_until(lambda: group.info(1) is not None, 20, "the node answers")
        with pytest.raises(redis.exceptions.ResponseError, match="disabled"):
            client.execute_command("CHORUS.DEBUG", "ISOLATE", "ON")
    finally:
        group.stop_all()


def test_an_async_leader_cut_off_converges_by_snapshot_after_its_writes_are_discarded(tmp_path):
    """Under `async` a leader cut off from its peers still acknowledges writes (its own fsync is
    enough) and applies them. The others elect a new leader without them. When the old leader hears
    from the group again its state holds writes the group discarded: it refuses follower reads, lists
    the writes in its rollback file, and converges by installing the new leader's snapshot."""
    group = Group(tmp_path, durability="async", extra_args=["--enable-debug-commands"])
    group.start_all()
    try:
        leader = wait_until(lambda: group.leader(), 20, "a leader is elected")
        followers = [i for i in group.ids if i != leader]
        client = group.client(leader)
        assert client.set("kept", "1") is True
        token = client.execute_command("CHORUS.TOKEN")
        wait_until(lambda: all(applied_index(group, i) >= token for i in followers), 10, "followers have it")

        assert client.execute_command("CHORUS.DEBUG", "ISOLATE", "ON") in (True, b"OK")
        doomed = []
        for i in range(5):
            try:
                if client.set(f"doomed-{i}", "v") is True:
                    doomed.append(f"doomed-{i}")
            except redis.exceptions.ResponseError:
                break  # check-quorum deposed it already
        assert doomed, "an async leader acknowledges on its own fsync"
        new_leader = wait_until(lambda: group.leader(followers), 20, "the others elect a new leader")
        assert group.client(new_leader).set("after", "1") is True
        assert client.execute_command("CHORUS.DEBUG", "ISOLATE", "OFF") in (True, b"OK")

        reader = group.client(leader)
        reader.execute_command("READONLY")

        def converged():
            try:
                return reader.get("after") == b"1" and all(reader.get(key) is None for key in doomed)
            except redis.exceptions.ResponseError:
                return False  # TRYAGAIN while the diverged state waits for the snapshot

        wait_until(converged, 30, "the old leader converges on the new leader's state")
        assert reader.get("kept") == b"1"
        assert any("installed a snapshot from the leader" in path.read_text() for path in group.logs[leader]), \
            group.log_tails()
        content = (tmp_path / f"data{leader}" / "rollback.log").read_bytes()
        for key in doomed:
            assert key.encode() in content, f"{key} is missing from the rollback file"
        assert group.info(leader)["chorus_discarded_acknowledged_events"] >= 1
    finally:
        group.stop_all()
