"""Command coverage with redis-py, over RESP2 and RESP3 (the `r` fixture runs each test with both).

Expected replies are Redis 7's; where Chorus documents a deliberate difference (one database, no
CONFIG SET, ...) the test says so.
"""

from __future__ import annotations

import time

import pytest
import redis
from redis.crc import key_slot

from conftest import wait_until

# ---------------------------------------------------------------------------------------------
# Connection commands
# ---------------------------------------------------------------------------------------------


def test_ping(r):
    assert r.ping() is True
    # redis-py turns PING's reply into a bool; look at the raw reply instead.
    r.set_response_callback("PING", lambda response, **options: response)
    assert r.execute_command("PING") == "PONG"
    assert r.execute_command("PING", "hello world") == "hello world"
    assert r.echo("a message") == "a message"
    assert r.echo("") == ""


def test_ping_arity(r):
    with pytest.raises(redis.ResponseError, match=r"^wrong number of arguments for 'ping' command$"):
        r.execute_command("PING", "a", "b")


def test_echo_binary(rb):
    payload = bytes(range(256)) * 4
    assert rb.echo(payload) == payload


def test_hello_2(node):
    client = node.client(protocol=2, decode_responses=True)
    reply = client.execute_command("HELLO", "2")
    # RESP2 flattens the map into an array of name, value pairs.
    if isinstance(reply, list):
        reply = dict(zip(reply[::2], reply[1::2]))
    assert reply["server"] == "redis"
    assert reply["proto"] == 2
    assert reply["mode"] == "standalone"
    assert reply["role"] == "master"
    assert isinstance(reply["id"], int)
    assert reply["version"].count(".") == 2
    assert client.set("after-hello", "1") is True
    assert client.get("after-hello") == "1"


def test_hello_3(node):
    client = node.client(protocol=3, decode_responses=True)
    reply = client.execute_command("HELLO", "3")
    assert isinstance(reply, dict)
    assert reply["server"] == "redis"
    assert reply["proto"] == 3
    assert reply["modules"] == []
    assert reply["id"] == client.client_id()
    # The connection now speaks RESP3: a map reply arrives as a map.
    assert isinstance(client.execute_command("CONFIG GET", "save"), dict)


def test_hello_setname(node):
    client = node.client(protocol=3, decode_responses=True)
    client.execute_command("HELLO", "3", "SETNAME", "e2e-hello")
    assert client.client_getname() == "e2e-hello"


def test_hello_without_version_reports_current_protocol(node):
    client = node.client(protocol=3, decode_responses=True)
    assert client.execute_command("HELLO")["proto"] == 3


def test_hello_noproto(r):
    with pytest.raises(redis.ResponseError, match=r"^NOPROTO unsupported protocol version$"):
        r.execute_command("HELLO", "4")
    with pytest.raises(redis.ResponseError, match=r"^NOPROTO unsupported protocol version$"):
        r.execute_command("HELLO", "1")
    # The connection keeps its protocol after a refused HELLO.
    assert r.set("k", "v") is True
    assert r.get("k") == "v"


def test_hello_noproto_raw(node):
    with node.connect() as sock:
        sock.sendall(b"HELLO 4\r\n")
        assert read_line(sock) == b"-NOPROTO unsupported protocol version\r\n"
        sock.sendall(b"PING\r\n")
        assert read_line(sock) == b"+PONG\r\n"


def test_hello_3_raw_is_a_resp3_map(node):
    with node.connect() as sock:
        sock.sendall(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n")
        assert read_line(sock) == b"%7\r\n"


def test_select(r):
    assert r.execute_command("SELECT", "0") in ("OK", True)
    with pytest.raises(redis.ResponseError, match=r"^DB index is out of range$"):
        r.execute_command("SELECT", "1")
    with pytest.raises(redis.ResponseError, match=r"^value is not an integer or out of range$"):
        r.execute_command("SELECT", "x")


def test_quit_closes_the_connection(node):
    with node.connect() as sock:
        sock.sendall(b"*1\r\n$4\r\nQUIT\r\n")
        assert read_line(sock) == b"+OK\r\n"
        assert sock.recv(1024) == b""
    assert node.ping_ok()


def test_quit_with_redis_py(r):
    assert r.execute_command("QUIT") in ("OK", True)
    # redis-py does not know the node closed the connection: drop it, and the next command
    # opens a new one.
    r.connection_pool.disconnect()
    assert r.ping() is True


def test_reset(node):
    # RESET also goes back to RESP2, so this uses a RESP2 client.
    r = node.client(decode_responses=True)
    r.client_setname("before-reset")
    assert r.execute_command("RESET") == "RESET"
    assert r.client_getname() is None


def test_client_id_setname_getname(r):
    client_id = r.client_id()
    assert isinstance(client_id, int) and client_id > 0
    assert r.client_id() == client_id
    assert r.client_getname() is None
    assert r.client_setname("e2e-client") is True
    assert r.client_getname() == "e2e-client"
    with pytest.raises(redis.ResponseError, match=r"Client names cannot contain spaces"):
        r.client_setname("has space")
    assert r.client_getname() == "e2e-client"


def test_client_ids_are_distinct(node):
    ids = {node.client().client_id() for _ in range(5)}
    assert len(ids) == 5


def client_info_text(r) -> str:
    """CLIENT INFO's raw line (without redis-py's parsing of it)."""
    r.set_response_callback("CLIENT INFO", lambda response, **options: response)
    text = r.execute_command("CLIENT INFO")
    return text.decode() if isinstance(text, bytes) else str(text)


def client_info_fields(r) -> dict:
    return dict(field.split("=", 1) for field in client_info_text(r).split())


def test_client_setinfo(r):
    assert r.client_setinfo("lib-name", "e2e-lib") is True
    assert r.client_setinfo("LIB-VER", "1.2.3") is True
    with pytest.raises(redis.ResponseError, match=r"(?i)unrecognized option"):
        r.client_setinfo("bogus", "x")
    fields = client_info_fields(r)
    assert fields["id"] == str(r.client_id())
    assert fields["lib-name"] == "e2e-lib"
    assert fields["lib-ver"] == "1.2.3"


def test_client_setinfo_sent_by_redis_py_on_connect(r, protocol):
    # redis-py sends CLIENT SETINFO LIB-NAME / LIB-VER when it connects (ignoring errors).
    fields = client_info_fields(r)
    assert fields["lib-name"] == "redis-py"
    assert fields["lib-ver"] == redis.__version__
    assert fields["resp"] == str(protocol)
    assert fields["db"] == "0"


def test_client_info_parses_with_redis_py(r):
    # redis-py's client_info() converts the integer fields Redis always sends (age, idle, sub, psub,
    # multi, qbuf, qbuf-free, obl, argv-mem, oll, omem, tot-mem, ...) and fails if one is missing.
    r.client_setname("parsed")
    info = r.client_info()
    assert info["id"] == r.client_id()
    assert info["name"] == "parsed"
    assert info["db"] == 0
    assert info["lib-name"] == "redis-py"


def test_client_unknown_subcommand(r):
    with pytest.raises(redis.ResponseError, match=r"^unknown subcommand 'NOPE'. Try CLIENT HELP.$"):
        r.execute_command("CLIENT", "NOPE")


# ---------------------------------------------------------------------------------------------
# Strings
# ---------------------------------------------------------------------------------------------


def test_get_set(r):
    assert r.get("missing") is None
    assert r.set("k", "v") is True
    assert r.get("k") == "v"
    assert r.set("k", "v2") is True
    assert r.get("k") == "v2"
    assert r.set("empty", "") is True
    assert r.get("empty") == ""
    assert r.strlen("empty") == 0


def test_set_nx_xx(r):
    assert r.set("k", "1", xx=True) is None
    assert r.get("k") is None
    assert r.set("k", "1", nx=True) is True
    assert r.set("k", "2", nx=True) is None
    assert r.get("k") == "1"
    assert r.set("k", "3", xx=True) is True
    assert r.get("k") == "3"
    with pytest.raises(redis.ResponseError, match=r"^syntax error$"):
        r.execute_command("SET", "k", "v", "NX", "XX")


def test_set_repeated_options_like_redis(r):
    # Redis accepts an option given twice (the last value wins) as long as none conflict.
    r.set_response_callback("SET", lambda response, **options: response)
    assert r.execute_command("SET", "k", "v", "EX", "10", "EX", "200") == "OK"
    assert 199 <= r.ttl("k") <= 200
    assert r.execute_command("SET", "n", "v", "NX", "NX") == "OK"
    assert r.execute_command("SET", "n", "w", "XX", "XX", "GET", "GET") == "v"


def test_set_get_option(r):
    assert r.set("k", "1", get=True) is None
    assert r.set("k", "2", get=True) == "1"
    assert r.get("k") == "2"
    # NX GET: returns the old value, does not set.
    assert r.set("k", "3", nx=True, get=True) == "2"
    assert r.get("k") == "2"
    assert r.set("fresh", "x", nx=True, get=True) is None
    assert r.get("fresh") == "x"


def test_set_expiry_options(r):
    assert r.set("ex", "v", ex=100) is True
    assert 99 <= r.ttl("ex") <= 100
    assert 99_000 <= r.pttl("ex") <= 100_000
    assert r.set("px", "v", px=100_000) is True
    assert 99_000 <= r.pttl("px") <= 100_000
    now = int(time.time())
    assert r.set("exat", "v", exat=now + 200) is True
    assert 198 <= r.ttl("exat") <= 200
    assert r.expiretime("exat") == now + 200
    now_ms = int(time.time() * 1000)
    assert r.set("pxat", "v", pxat=now_ms + 300_000) is True
    assert 298_000 <= r.pttl("pxat") <= 300_000
    assert r.pexpiretime("pxat") == now_ms + 300_000


def test_set_keepttl(r):
    r.set("k", "v1", ex=1000)
    assert r.set("k", "v2", keepttl=True) is True
    assert r.get("k") == "v2"
    assert 990 <= r.ttl("k") <= 1000
    # A plain SET clears the TTL.
    assert r.set("k", "v3") is True
    assert r.ttl("k") == -1


def test_set_invalid_expiry(r):
    with pytest.raises(redis.ResponseError, match=r"^invalid expire time in 'set' command$"):
        r.execute_command("SET", "k", "v", "EX", "0")
    with pytest.raises(redis.ResponseError, match=r"^invalid expire time in 'set' command$"):
        r.execute_command("SET", "k", "v", "PX", "-5")
    with pytest.raises(redis.ResponseError, match=r"^value is not an integer or out of range$"):
        r.execute_command("SET", "k", "v", "EX", "ten")
    with pytest.raises(redis.ResponseError, match=r"^syntax error$"):
        r.execute_command("SET", "k", "v", "EX", "10", "PX", "100")
    with pytest.raises(redis.ResponseError, match=r"^syntax error$"):
        r.execute_command("SET", "k", "v", "EX", "10", "KEEPTTL")
    with pytest.raises(redis.ResponseError, match=r"^syntax error$"):
        r.execute_command("SET", "k", "v", "BOGUS")
    assert r.exists("k") == 0


def test_setnx_getset_getdel(r):
    assert r.setnx("k", "1") is True
    assert r.setnx("k", "2") is False
    assert r.get("k") == "1"
    assert r.getset("k", "3") == "1"
    assert r.getset("new", "x") is None
    assert r.get("k") == "3"
    assert r.getdel("k") == "3"
    assert r.get("k") is None
    assert r.getdel("k") is None


def test_getset_clears_ttl(r):
    r.set("k", "v", ex=100)
    r.getset("k", "w")
    assert r.ttl("k") == -1


def test_setex_psetex(r):
    assert r.setex("k", 100, "v") is True
    assert r.get("k") == "v"
    assert 99 <= r.ttl("k") <= 100
    assert r.psetex("p", 100_000, "v") is True
    assert 99_000 <= r.pttl("p") <= 100_000
    with pytest.raises(redis.ResponseError, match=r"^invalid expire time in 'setex' command$"):
        r.execute_command("SETEX", "k", "0", "v")
    with pytest.raises(redis.ResponseError, match=r"^invalid expire time in 'psetex' command$"):
        r.execute_command("PSETEX", "k", "-1", "v")


def test_getex(r):
    r.set("k", "v")
    assert r.getex("k") == "v"
    assert r.ttl("k") == -1
    assert r.getex("k", ex=100) == "v"
    assert 99 <= r.ttl("k") <= 100
    assert r.getex("k", px=200_000) == "v"
    assert 199_000 <= r.pttl("k") <= 200_000
    assert r.getex("k", exat=int(time.time()) + 300) == "v"
    assert 298 <= r.ttl("k") <= 300
    assert r.getex("k", pxat=int(time.time() * 1000) + 400_000) == "v"
    assert 398_000 <= r.pttl("k") <= 400_000
    assert r.getex("k", persist=True) == "v"
    assert r.ttl("k") == -1
    assert r.getex("missing", ex=10) is None
    assert r.exists("missing") == 0


def test_del_unlink_exists(r):
    r.mset({"a": "1", "b": "2", "c": "3"})
    assert r.exists("a") == 1
    assert r.exists("a", "a", "b", "zzz") == 3  # duplicates counted
    assert r.delete("a", "a", "zzz") == 1
    assert r.exists("a") == 0
    assert r.unlink("b", "c", "zzz") == 2
    assert r.exists("a", "b", "c") == 0
    assert r.delete("nothing") == 0


def test_incr_decr(r):
    assert r.incr("n") == 1
    assert r.incr("n") == 2
    assert r.incrby("n", 10) == 12
    assert r.incrby("n", -20) == -8
    assert r.decr("n") == -9
    assert r.decrby("n", 11) == -20
    assert r.get("n") == "-20"
    assert r.decr("fresh") == -1
    r.set("spaces", " 5")
    with pytest.raises(redis.ResponseError, match=r"^value is not an integer or out of range$"):
        r.incr("spaces")


def test_incr_keeps_ttl(r):
    r.set("n", "1", ex=100)
    r.incr("n")
    assert 99 <= r.ttl("n") <= 100


def test_incr_errors(r):
    r.set("s", "abc")
    with pytest.raises(redis.ResponseError, match=r"^value is not an integer or out of range$"):
        r.incr("s")
    r.set("f", "1.5")
    with pytest.raises(redis.ResponseError, match=r"^value is not an integer or out of range$"):
        r.incrby("f", 1)
    with pytest.raises(redis.ResponseError, match=r"^value is not an integer or out of range$"):
        r.execute_command("INCRBY", "n", "one")
    r.set("max", str(2**63 - 1))
    with pytest.raises(redis.ResponseError, match=r"^increment or decrement would overflow$"):
        r.incr("max")
    assert r.get("max") == str(2**63 - 1)
    r.set("min", str(-(2**63)))
    with pytest.raises(redis.ResponseError, match=r"^increment or decrement would overflow$"):
        r.decr("min")
    with pytest.raises(redis.ResponseError, match=r"^value is not an integer or out of range$"):
        r.execute_command("INCRBY", "n", str(2**63))
    assert r.get("s") == "abc"


def test_decrby_min_is_refused(r):
    with pytest.raises(redis.ResponseError, match=r"^decrement would overflow$"):
        r.execute_command("DECRBY", "n", str(-(2**63)))


def test_append_strlen(r):
    assert r.append("k", "hello") == 5
    assert r.append("k", " world") == 11
    assert r.get("k") == "hello world"
    assert r.strlen("k") == 11
    assert r.strlen("missing") == 0


def test_mget_mset_msetnx(r):
    assert r.mset({"a": "1", "b": "2"}) is True
    assert r.mget("a", "missing", "b") == ["1", None, "2"]
    assert r.msetnx({"b": "x", "c": "3"}) is False
    assert r.exists("c") == 0
    assert r.get("b") == "2"
    assert r.msetnx({"c": "3", "d": "4"}) is True
    assert r.mget(["c", "d"]) == ["3", "4"]
    with pytest.raises(redis.ResponseError, match=r"^wrong number of arguments for 'mset' command$"):
        r.execute_command("MSET", "a", "1", "b")


def test_getrange_setrange(r):
    r.set("k", "Hello World")
    assert r.getrange("k", 0, 4) == "Hello"
    assert r.getrange("k", -5, -1) == "World"
    assert r.getrange("k", 6, 1000) == "World"
    assert r.getrange("k", 5, 2) == ""
    assert r.getrange("missing", 0, 10) == ""
    assert r.setrange("k", 6, "Redis") == 11
    assert r.get("k") == "Hello Redis"
    assert r.setrange("pad", 3, "x") == 4
    assert r.get("pad") == "\x00\x00\x00x"
    with pytest.raises(redis.ResponseError, match=r"^offset is out of range$"):
        r.setrange("k", -1, "x")


# ---------------------------------------------------------------------------------------------
# Expiry
# ---------------------------------------------------------------------------------------------


def test_expire_ttl_persist(r):
    assert r.ttl("missing") == -2
    assert r.pttl("missing") == -2
    assert r.expire("missing", 10) is False
    r.set("k", "v")
    assert r.ttl("k") == -1
    assert r.pttl("k") == -1
    assert r.expire("k", 100) is True
    assert 99 <= r.ttl("k") <= 100
    assert r.pexpire("k", 50_000) is True
    assert 49_000 <= r.pttl("k") <= 50_000
    assert r.persist("k") is True
    assert r.ttl("k") == -1
    assert r.persist("k") is False
    assert r.persist("missing") is False


def test_expire_nx_xx_gt_lt(r):
    r.set("k", "v")
    assert r.expire("k", 100, xx=True) is False  # no TTL yet
    assert r.ttl("k") == -1
    assert r.expire("k", 100, gt=True) is False  # no TTL counts as infinite
    assert r.expire("k", 100, nx=True) is True
    assert r.expire("k", 200, nx=True) is False
    assert 99 <= r.ttl("k") <= 100
    assert r.expire("k", 200, xx=True) is True
    assert 199 <= r.ttl("k") <= 200
    assert r.expire("k", 100, gt=True) is False
    assert r.expire("k", 300, gt=True) is True
    assert 299 <= r.ttl("k") <= 300
    assert r.expire("k", 400, lt=True) is False
    assert r.expire("k", 50, lt=True) is True
    assert 49 <= r.ttl("k") <= 50
    assert r.pexpire("k", 40_000, lt=True) is True
    assert r.pexpire("k", 30_000, gt=True) is False
    assert 39_000 <= r.pttl("k") <= 40_000
    r.set("nottl", "v")
    assert r.expire("nottl", 100, lt=True) is True  # no TTL counts as infinite
    with pytest.raises(redis.ResponseError, match=r"^NX and XX, GT or LT options at the same time are not compatible$"):
        r.execute_command("EXPIRE", "k", "10", "NX", "XX")
    with pytest.raises(redis.ResponseError, match=r"^GT and LT options at the same time are not compatible$"):
        r.execute_command("EXPIRE", "k", "10", "GT", "LT")
    with pytest.raises(redis.ResponseError, match=r"^Unsupported option BOGUS$"):
        r.execute_command("EXPIRE", "k", "10", "BOGUS")


def test_expireat_pexpireat_expiretime(r):
    r.set("k", "v")
    assert r.expiretime("k") == -1
    assert r.pexpiretime("k") == -1
    assert r.expiretime("missing") == -2
    assert r.pexpiretime("missing") == -2
    at = int(time.time()) + 1000
    assert r.expireat("k", at) is True
    assert r.expiretime("k") == at
    assert r.pexpiretime("k") == at * 1000
    at_ms = int(time.time() * 1000) + 2_000_000
    assert r.pexpireat("k", at_ms) is True
    assert r.pexpiretime("k") == at_ms
    assert r.expiretime("k") == at_ms // 1000


def test_expire_in_the_past_deletes(r):
    r.set("k", "v")
    assert r.expire("k", -1) is True
    assert r.exists("k") == 0
    r.set("k2", "v")
    assert r.pexpireat("k2", 1000) is True
    assert r.get("k2") is None


def test_expire_invalid(r):
    r.set("k", "v")
    with pytest.raises(redis.ResponseError, match=r"^value is not an integer or out of range$"):
        r.execute_command("EXPIRE", "k", "soon")
    with pytest.raises(redis.ResponseError, match=r"^invalid expire time in 'expire' command$"):
        r.execute_command("EXPIRE", "k", str(2**62))


def test_keys_actually_expire(r):
    r.set("short", "v", px=50)
    r.set("long", "v", ex=1000)
    r.setex("short2", 1, "v")
    wait_until(lambda: r.get("short") is None, 10, "GET short to return nil after PX 50")
    assert r.exists("short") == 0
    assert r.ttl("short") == -2
    wait_until(lambda: r.get("short2") is None, 10, "GET short2 to return nil after SETEX 1")
    assert r.get("long") == "v"
    # Expired keys disappear from DBSIZE / KEYS / SCAN too.
    wait_until(lambda: r.dbsize() == 1, 10, "DBSIZE to drop the expired keys")
    assert r.keys("*") == ["long"]
    assert list(r.scan_iter()) == ["long"]


def test_pexpire_actually_expires(r):
    r.set("k", "v")
    r.pexpire("k", 30)
    wait_until(lambda: r.exists("k") == 0, 10, "key to expire after PEXPIRE 30")


# ---------------------------------------------------------------------------------------------
# Keyspace
# ---------------------------------------------------------------------------------------------


def test_dbsize_type_flushall(r):
    assert r.dbsize() == 0
    assert r.type("missing") == "none"
    r.mset({f"k{i}": str(i) for i in range(10)})
    assert r.dbsize() == 10
    assert r.type("k1") == "string"
    assert r.flushall() is True
    assert r.dbsize() == 0
    assert r.get("k1") is None
    r.set("x", "1")
    assert r.flushall(asynchronous=True) is True
    assert r.dbsize() == 0
    r.set("y", "1")
    assert r.execute_command("FLUSHALL", "SYNC") in ("OK", True)
    assert r.flushdb() is True
    assert r.dbsize() == 0


def test_keys(r):
    r.mset({"user:1": "a", "user:2": "b", "user:10": "c", "item:1": "d", "h?llo": "e"})
    assert sorted(r.keys("*")) == sorted(["user:1", "user:2", "user:10", "item:1", "h?llo"])
    assert sorted(r.keys("user:?")) == ["user:1", "user:2"]
    assert sorted(r.keys("user:*")) == ["user:1", "user:10", "user:2"]
    assert r.keys("item:[0-9]") == ["item:1"]
    assert r.keys("h\\?llo") == ["h?llo"]
    assert r.keys("nomatch*") == []


def test_scan_returns_every_key_exactly_once(r):
    keys = [f"key:{i:04d}" for i in range(1000)]
    for start in range(0, 1000, 250):
        r.mset({key: key.upper() for key in keys[start : start + 250]})
    assert r.dbsize() == 1000
    seen = list(r.scan_iter(count=37))
    assert len(seen) == len(set(seen)) == 1000
    assert set(seen) == set(keys)
    assert sorted(r.scan_iter()) == keys


def test_scan_match_and_count(r):
    r.mset({f"a:{i}": "1" for i in range(100)})
    r.mset({f"b:{i}": "1" for i in range(100)})
    cursor, batch = r.scan(0, count=10)
    assert isinstance(cursor, int)
    assert 0 < len(batch) <= 100
    matched = list(r.scan_iter(match="a:*", count=15))
    assert sorted(matched) == sorted(f"a:{i}" for i in range(100))
    assert sorted(r.scan_iter(match="b:9?")) == sorted(f"b:{i}" for i in range(90, 100))
    assert list(r.scan_iter(match="zzz*")) == []
    # A full SCAN ends with cursor 0.
    cursor, total = 0, 0
    while True:
        cursor, batch = r.scan(cursor, count=50)
        total += len(batch)
        if cursor == 0:
            break
    assert total == 200


def test_scan_type_option(r):
    r.mset({"s1": "1", "s2": "2"})
    assert sorted(r.scan_iter(_type="string")) == ["s1", "s2"]
    assert list(r.scan_iter(_type="hash")) == []


def test_scan_invalid_cursor(r):
    with pytest.raises(redis.ResponseError, match=r"^invalid cursor$"):
        r.execute_command("SCAN", "notanumber")


# ---------------------------------------------------------------------------------------------
# Server / introspection
# ---------------------------------------------------------------------------------------------


def test_info_sections(r):
    info = r.info()
    for field in ("redis_version", "connected_clients", "loading", "role", "tcp_port", "uptime_in_seconds"):
        assert field in info, field
    assert info["role"] == "master"
    assert info["loading"] == 0
    assert info["connected_clients"] >= 1
    assert r.info("server")["redis_version"]
    assert r.info("server")["tcp_port"] == r.connection_pool.connection_kwargs["port"]
    assert r.info("clients")["connected_clients"] >= 1
    assert "loading" in r.info("persistence")
    assert r.info("replication")["role"] == "master"
    assert "redis_version" in r.info("everything")


def test_info_keyspace_shows_db0_keys(r):
    # (Counts are checked after DBSIZE, which waits for every earlier write to be applied; see
    # test_info_keyspace_reflects_acknowledged_writes for INFO straight after a write.)
    r.mset({f"k{i}": "v" for i in range(7)})
    assert r.dbsize() == 7
    assert r.info("keyspace")["db0"]["keys"] == 7
    assert r.info()["db0"]["keys"] == 7
    assert r.info("everything")["db0"]["keys"] == 7


def test_info_keyspace_reflects_acknowledged_writes(r):
    """INFO keyspace straight after an acknowledged write counts it (as Redis's does)."""
    stale = []
    expected = 0
    for i in range(300):
        r.mset({f"k{i}:{j}": "v" * 100 for j in range(20)})
        expected += 20
        keys = r.info("keyspace").get("db0", {}).get("keys", 0)
        if keys != expected:
            stale.append((expected, keys))
    assert not stale, f"{len(stale)} of 300 INFO replies missed acknowledged writes, e.g. (expected, got) {stale[:5]}"


def test_info_keyspace_counts_expires(r):
    # Redis's format is db0:keys=N,expires=M,avg_ttl=T; exporters and dashboards read `expires`.
    r.mset({"a": "1", "b": "2", "c": "3"})
    r.expire("a", 1000)
    r.pexpire("b", 2_000_000)
    assert r.dbsize() == 3  # waits until the writes are applied (INFO may lag them otherwise)
    db0 = r.info("keyspace")["db0"]
    assert db0["keys"] == 3
    assert db0["expires"] == 2
    assert "avg_ttl" in db0


def test_info_keyspace_empty(r):
    assert r.info("keyspace") == {}


def test_command_count_and_docs(r):
    count = r.command_count()
    assert isinstance(count, int) and count >= 40
    commands = r.command()
    assert len(commands) == count
    assert commands["get"]["arity"] == 2
    assert commands["set"]["arity"] == -3
    # What redis-cli asks at startup to build its hints.
    docs = r.execute_command("COMMAND DOCS")
    if isinstance(docs, list):
        docs = dict(zip(docs[::2], docs[1::2]))
    assert len(docs) == count
    assert {"get", "set", "ping", "scan", "expire"} <= set(docs)
    get_doc = docs["get"]
    if isinstance(get_doc, list):
        get_doc = dict(zip(get_doc[::2], get_doc[1::2]))
    assert get_doc["group"] == "string"
    assert get_doc["summary"]
    one = r.execute_command("COMMAND DOCS", "get")
    assert len(one) == (1 if isinstance(one, dict) else 2)


def test_command_info(r):
    info = r.execute_command("COMMAND INFO", "get", "nosuchcommand")
    assert len(info) == 2
    assert info[0][0] == "get"
    assert info[0][1] == 2
    assert info[1] is None


def test_config_get(r):
    # What redis-benchmark asks before a run.
    save = r.config_get("save")
    assert save == {"save": ""}
    appendonly = r.config_get("appendonly")
    assert set(appendonly) == {"appendonly"}
    assert appendonly["appendonly"] in ("yes", "no")
    assert r.config_get("nonexistent-param") == {}
    several = r.execute_command("CONFIG GET", "save", "appendonly")
    if isinstance(several, list):
        several = dict(zip(several[::2], several[1::2]))
    assert set(several) == {"save", "appendonly"}


def test_cluster_keyslot(r):
    assert r.execute_command("CLUSTER KEYSLOT", "foo") == 12182
    assert r.execute_command("CLUSTER KEYSLOT", "{user1000}.following") == r.execute_command(
        "CLUSTER KEYSLOT", "user1000"
    )
    for key in ["", "bar", "hello", "user1000", "{}x", "{a}b", "a{b}c{d}", "{{x}}", "\u00e9t\u00e9", "x" * 1000]:
        assert r.execute_command("CLUSTER KEYSLOT", key) == key_slot(key.encode()), key


def test_time(r):
    seconds, micros = r.time()
    assert abs(seconds - time.time()) < 60
    assert 0 <= micros < 1_000_000


# ---------------------------------------------------------------------------------------------
# Errors through redis-py
# ---------------------------------------------------------------------------------------------


def test_unknown_command(r):
    with pytest.raises(redis.ResponseError) as error:
        r.execute_command("FOO", "a")
    assert str(error.value) == "unknown command 'FOO', with args beginning with: 'a' "


def test_wrong_arity(r):
    with pytest.raises(redis.ResponseError) as error:
        r.execute_command("GET")
    assert str(error.value) == "wrong number of arguments for 'get' command"
    with pytest.raises(redis.ResponseError) as error:
        r.execute_command("GET", "a", "b")
    assert str(error.value) == "wrong number of arguments for 'get' command"


# ---------------------------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------------------------


def test_pipeline_mixed(r):
    pipe = r.pipeline(transaction=False)
    pipe.set("a", "1")
    pipe.incr("a")
    pipe.get("a")
    pipe.get("missing")
    pipe.mset({"b": "2", "c": "3"})
    pipe.mget("a", "b", "c")
    pipe.exists("a", "b", "zz")
    pipe.expire("b", 100)
    pipe.ttl("b")
    pipe.delete("c")
    pipe.ping()
    pipe.echo("e")
    pipe.dbsize()
    pipe.append("a", "x")
    pipe.getdel("a")
    results = pipe.execute()
    assert results == [True, 2, "2", None, True, ["2", "2", "3"], 2, True, 100, 1, True, "e", 2, 2, "2x"]


def test_pipeline_with_errors_keeps_order(r):
    pipe = r.pipeline(transaction=False)
    pipe.set("s", "abc")
    pipe.incr("s")
    pipe.get("s")
    pipe.execute_command("NOSUCHCOMMAND")
    pipe.set("t", "1")
    results = pipe.execute(raise_on_error=False)
    assert results[0] is True
    assert isinstance(results[1], redis.ResponseError)
    assert results[2] == "abc"
    assert isinstance(results[3], redis.ResponseError)
    assert results[4] is True


def test_pipeline_1000_commands(r):
    pipe = r.pipeline(transaction=False)
    for i in range(1000):
        if i % 4 == 0:
            pipe.set(f"p:{i}", str(i))
        elif i % 4 == 1:
            pipe.get(f"p:{i - 1}")
        elif i % 4 == 2:
            pipe.incr("counter")
        else:
            pipe.ping()
    results = pipe.execute()
    assert len(results) == 1000
    for i, result in enumerate(results):
        if i % 4 == 0:
            assert result is True
        elif i % 4 == 1:
            assert result == str(i - 1)
        elif i % 4 == 2:
            assert result == i // 4 + 1
        else:
            assert result is True
    assert r.get("counter") == "250"
    assert r.dbsize() == 251


def test_pipeline_reads_see_earlier_writes_of_same_key(r):
    pipe = r.pipeline(transaction=False)
    for i in range(200):
        pipe.set("same", str(i))
        pipe.get("same")
    results = pipe.execute()
    assert results[1::2] == [str(i) for i in range(200)]


def test_pipeline_keyspace_reads_see_exactly_the_earlier_writes(r):
    """DBSIZE / KEYS / SCAN in a pipeline answer for the keyspace as of their place in the pipeline:
    they see every write before them and none after them."""

    def run(*commands):
        pipe = r.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return pipe.execute()

    assert run(("SET", "a", "1"), ("SET", "c", "1"), ("DBSIZE",), ("DEL", "c")) == [True, True, 2, 1]
    r.flushall()
    assert run(("SET", "a", "1"), ("KEYS", "*"), ("DEL", "a")) == [True, ["a"], 1]
    r.flushall()
    assert run(("SET", "a", "1"), ("SCAN", "0"), ("FLUSHALL",)) == [True, (0, ["a"]), True]
    r.flushall()
    assert run(("SET", "a", "1"), ("DBSIZE",), ("SET", "b", "2"), ("DBSIZE",), ("FLUSHALL",), ("DBSIZE",)) == [
        True,
        1,
        True,
        2,
        True,
        0,
    ]


def test_concurrent_clients_see_each_others_writes(node, protocol):
    writer = node.client(protocol=protocol, decode_responses=True)
    reader = node.client(protocol=protocol, decode_responses=True)
    for i in range(50):
        writer.set("shared", str(i))
        assert reader.get("shared") == str(i)


def read_line(sock) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


# ---------------------------------------------------------------------------------------------
# Concurrent clients: atomicity of read-modify-write commands
# ---------------------------------------------------------------------------------------------


def run_threads(count, target):
    import threading

    errors = []

    def wrapped(i):
        try:
            target(i)
        except Exception as error:  # reported below
            errors.append(repr(error))

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive()
    assert not errors, errors


def test_concurrent_incr_is_atomic(node):
    clients = [node.client(single_connection_client=True) for _ in range(16)]

    def work(i):
        pipe = clients[i].pipeline(transaction=False)
        for _ in range(100):
            pipe.incr("counter")
            pipe.incrby("counter-by-3", 3)
        pipe.execute()
        for _ in range(50):
            clients[i].decr("down")

    run_threads(16, work)
    check = node.client(decode_responses=True)
    assert check.get("counter") == "1600"
    assert check.get("counter-by-3") == "4800"
    assert check.get("down") == "-800"


def test_concurrent_setnx_has_one_winner(node):
    clients = [node.client(single_connection_client=True, decode_responses=True) for _ in range(16)]
    results = {}

    def work(i):
        for round_no in range(20):
            results[(i, round_no)] = clients[i].setnx(f"race:{round_no}", f"client-{i}")

    run_threads(16, work)
    check = node.client(decode_responses=True)
    for round_no in range(20):
        winners = [i for i in range(16) if results[(i, round_no)]]
        assert len(winners) == 1, (round_no, winners)
        assert check.get(f"race:{round_no}") == f"client-{winners[0]}"


def test_concurrent_getset_forms_one_chain(node):
    """Each GETSET returns the value it replaced: all the (old, new) pairs must chain up into one
    history from the initial value to the final one (a lost or duplicated update breaks the chain)."""
    clients = [node.client(single_connection_client=True, decode_responses=True) for _ in range(8)]
    clients[0].set("chain", "start")
    pairs = []

    def work(i):
        mine = []
        for n in range(100):
            new = f"{i}:{n}"
            mine.append((clients[i].getset("chain", new), new))
        pairs.extend(mine)

    run_threads(8, work)
    following = {}
    for old, new in pairs:
        assert old not in following, f"two GETSETs replaced {old!r}"
        following[old] = new
    value, steps = "start", 0
    while value in following:
        value = following[value]
        steps += 1
    assert steps == 800
    assert node.client(decode_responses=True).get("chain") == value


def test_scan_guarantee_under_concurrent_writes(node):
    """SCAN's guarantee: a key present for the whole iteration is returned (duplicates allowed),
    however many other keys are added and deleted meanwhile."""
    import threading

    scanner = node.client(decode_responses=True)
    stable = {f"stable:{i}" for i in range(1000)}
    scanner.mset({key: "v" for key in stable})
    stop = threading.Event()
    churned = []

    def churn():
        writer = node.client(decode_responses=True, single_connection_client=True)
        j = 0
        while not stop.is_set():
            pipe = writer.pipeline(transaction=False)
            for _ in range(20):
                pipe.set(f"churn:{j}", "x")
                if j >= 50:
                    pipe.delete(f"churn:{j - 50}")
                j += 1
            pipe.execute()
        churned.append(j)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        seen = set()
        for _ in range(3):
            seen.update(key for key in scanner.scan_iter(count=10) if key.startswith("stable:"))
            missing = stable - seen
            assert not missing, f"SCAN missed {len(missing)} stable keys, e.g. {sorted(missing)[:5]}"
            seen.clear()
    finally:
        stop.set()
        thread.join(timeout=60)
    assert churned and churned[0] > 0
