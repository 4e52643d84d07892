#!/usr/bin/env python3
"""Record Kinto 26.5 cache-backend test vectors (dev tool, not run by the Rust tests).

Run it with the Python of a virtualenv that has Kinto installed:

    python3 -m venv /tmp/kinto-venv
    /tmp/kinto-venv/bin/pip install 'kinto[postgresql,memcached,redis]==26.5.0'
    /tmp/kinto-venv/bin/python tests/data/kinto/record.py [--out DIR]

It starts its OWN throwaway servers on random free ports of 127.0.0.1 (one
PostgreSQL 15 cluster in a temp dir, three memcached, one redis-server), writes
values through Kinto's own backend classes, reads the raw stored data back
straight from the servers, writes values.json, postgresql.json,
memcached.json and redis.json into DIR (default: this file's folder), then
stops every server it started and removes the temp dirs.

Binary locations can be overridden with PG_BIN (folder with initdb, pg_ctl,
psql), MEMCACHED and REDIS_SERVER.  When run as root, PostgreSQL commands run
as the `postgres` user via `runuser -u postgres --`, and memcached runs with
`-u memcache` (or `-u nobody`).
"""

import argparse
import binascii
import datetime
import decimal
import json as stdjson
import logging
import math
import os
import pwd
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from importlib.metadata import version as dist_version

warnings.simplefilter("ignore")
# Kinto logs expected BackendErrors (e.g. Redis PSETEX with ttl 0) with a traceback.
logging.disable(logging.CRITICAL)

import memcache  # python-memcached
import psycopg2
import redis as redislib
import sqlalchemy
from pyramid import testing

import kinto
from kinto.core.cache import memcached as kmemcached
from kinto.core.cache import postgresql as kpostgresql
from kinto.core.cache import redis as kredis
from kinto.core.utils import json as kjson


HERE = os.path.dirname(os.path.abspath(__file__))
PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
MEMCACHED = os.environ.get("MEMCACHED", shutil.which("memcached") or "/usr/bin/memcached")
REDIS_SERVER = os.environ.get("REDIS_SERVER", shutil.which("redis-server") or "/usr/bin/redis-server")
IS_ROOT = os.geteuid() == 0

DAY = 86400


# --------------------------------------------------------------------------
# Throwaway servers
# --------------------------------------------------------------------------

def free_port(used):
    while True:
        port = random.randint(20000, 60000)
        if port in used:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        used.add(port)
        return port


def wait_port(port, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not come up")


class Servers:
    def __init__(self):
        self.used_ports = set()
        self.procs = []  # Popen objects we started
        self.tmpdirs = []
        self.pg_dir = None
        self.pg_port = None
        self.mc_ports = []
        self.redis_port = None

    def _pg_cmd(self, *args):
        cmd = list(args)
        if IS_ROOT:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        return cmd

    def start_postgresql(self):
        d = tempfile.mkdtemp(prefix="kcache-rec-pg-")
        self.tmpdirs.append(d)
        if IS_ROOT:
            pw = pwd.getpwnam("postgres")
            os.chown(d, pw.pw_uid, pw.pw_gid)
        self.pg_dir = os.path.join(d, "data")
        self.pg_port = free_port(self.used_ports)
        subprocess.run(
            self._pg_cmd(f"{PG_BIN}/initdb", "-D", self.pg_dir, "-U", "postgres",
                         "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"),
            check=True, stdout=subprocess.DEVNULL, cwd=d,
        )
        opts = (f"-p {self.pg_port} -c listen_addresses=127.0.0.1 -k {d} "
                f"-c TimeZone=UTC -c fsync=off")
        subprocess.run(
            self._pg_cmd(f"{PG_BIN}/pg_ctl", "-D", self.pg_dir, "-o", opts,
                         "-l", os.path.join(d, "log"), "-w", "start"),
            check=True, stdout=subprocess.DEVNULL, cwd=d,
        )
        wait_port(self.pg_port)

    def stop_postgresql(self):
        if self.pg_dir and os.path.exists(self.pg_dir):
            subprocess.run(
                self._pg_cmd(f"{PG_BIN}/pg_ctl", "-D", self.pg_dir, "-m", "fast", "-w", "stop"),
                stdout=subprocess.DEVNULL, cwd="/",
            )

    def start_memcached(self):
        port = free_port(self.used_ports)
        cmd = [MEMCACHED, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64"]
        if IS_ROOT:
            user = "memcache"
            try:
                pwd.getpwnam(user)
            except KeyError:
                user = "nobody"
            cmd += ["-u", user]
        self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(port)
        self.mc_ports.append(port)
        return port

    def start_redis(self):
        d = tempfile.mkdtemp(prefix="kcache-rec-redis-")
        self.tmpdirs.append(d)
        self.redis_port = free_port(self.used_ports)
        cmd = [REDIS_SERVER, "--port", str(self.redis_port), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--dir", d, "--daemonize", "no",
               "--protected-mode", "yes"]
        self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(self.redis_port)

    def stop_all(self):
        self.stop_postgresql()
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for d in self.tmpdirs:
            shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def config(settings):
    cfg = testing.setUp()
    cfg.add_settings(settings)
    return cfg


def same_value(a, b):
    """Strict equality: same types (bool vs int, int vs float), -0.0 sign kept."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a.keys()) == list(b.keys()) and all(same_value(a[k], b[k]) for k in a)
    return a == b


def _recv_until(s, done):
    buf = b""
    while not done(buf):
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError(f"connection closed, got {buf!r}")
        buf += chunk
    return buf


def mc_line(port, line):
    """Send one raw memcached text command whose reply is a single line."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(line + b"\r\n")
        return _recv_until(s, lambda b: b.endswith(b"\r\n"))


def mc_get(port, key_bytes):
    """Raw `get <key>`: returns (flags, data bytes) or None on a miss."""

    def done(buf):
        if buf == b"END\r\n":
            return True
        if b"\r\n" not in buf:
            return False
        header = buf.split(b"\r\n", 1)[0]
        size = int(header.split(b" ")[3])
        return len(buf) >= len(header) + 2 + size + len(b"\r\nEND\r\n")

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"get " + key_bytes + b"\r\n")
        reply = _recv_until(s, done)
    if reply == b"END\r\n":
        return None
    header, _, rest = reply.partition(b"\r\n")
    parts = header.split(b" ")
    assert parts[0] == b"VALUE" and parts[1] == key_bytes, reply
    flags, size = int(parts[2]), int(parts[3])
    assert rest[size:] == b"\r\nEND\r\n", reply
    return flags, rest[:size]


def mc_meta_ttl(port, key_bytes):
    """Meta get `mg <key> t f s`: remaining TTL in seconds (-1 = never) as the server sees it."""
    reply = mc_line(port, b"mg " + key_bytes + b" t f s")
    if reply.startswith(b"EN"):
        return None
    header = reply.split(b"\r\n")[0].decode()
    fields = {tok[0]: tok[1:] for tok in header.split()[1:]}
    return {"t": int(fields["t"]), "f": int(fields["f"]), "s": int(fields["s"])}


def mc_version(port):
    return mc_line(port, b"version").decode().strip().split(" ", 1)[1]


def utc_now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dump(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        stdjson.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


# --------------------------------------------------------------------------
# Value cases
# --------------------------------------------------------------------------

VALUE_CASES = [
    ("string_ascii", "hello world"),
    ("string_bmp_non_ascii", "é☃"),
    ("string_emoji_non_bmp", "😀"),
    ("string_control_chars", "\u0001\t\n"),
    ("string_short_escapes", "\b\f\r"),
    ("string_unit_separator_1f", "\u001f"),
    ("string_nul", "\u0000"),
    ("string_del_7f", "\u007f"),
    ("string_c1_control_80", "\u0080"),
    ("string_line_separators_2028_2029", "\u2028\u2029"),
    ("string_quotes_backslashes", 'say "hi" \\ C:\\path\\ \'single\''),
    ("string_script_close_slash", "</script>"),
    ("string_empty", ""),
    ("string_max_bmp_ffff", "\uffff"),
    ("int_zero", 0),
    ("int_negative", -42),
    ("int_i64_max", 2**63 - 1),
    ("int_i64_min", -(2**63)),
    ("int_2_pow_63", 2**63),
    ("int_u64_max", 2**64 - 1),
    ("int_2_pow_64", 2**64),
    ("int_2_pow_64_plus_1", 2**64 + 1),
    ("int_below_i64_min", -(2**63) - 1),
    ("int_10_pow_30", 10**30),
    ("int_huge_2_pow_70", 2**70),
    ("int_huge_negative", -(2**70)),
    ("float_3_14", 3.14),
    ("float_1e16", 1e16),
    ("float_1e15", 1e15),
    ("float_1e17", 1e17),
    ("float_1e22", 1e22),
    ("float_1e100", 1e100),
    ("float_1_5e-7", 1.5e-7),
    ("float_1e-4", 1e-4),
    ("float_1e-5", 1e-5),
    ("float_0_1", 0.1),
    ("float_0_5", 0.5),
    ("float_1_0", 1.0),
    ("float_negative_zero", -0.0),
    ("float_zero", 0.0),
    ("float_100000_0", 100000.0),
    ("float_123456789_123", 123456789.123),
    ("float_1_2345678901234567e19", 12345678901234567890.0),
    ("float_max", 1.7976931348623157e308),
    ("float_min_subnormal", 5e-324),
    ("float_negative", -2.5),
    ("bool_true", True),
    ("bool_false", False),
    ("null", None),
    ("list_empty", []),
    ("object_empty", {}),
    ("list_mixed", [1, "a", None, True, 2.5, [], {}]),
    ("object_nested_non_ascii_keys", {"clé": {"☃": [1, "ü"], "😀": True}, "ключ": None}),
    ("object_key_order_b_a", {"b": 1, "a": 2}),
]


# --------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------

class PGNowRecorder:
    """SQLAlchemy hook: right after Kinto's INSERT/UPDATE on `cache`, inside the
    very same transaction, read now() and the row, so `now()` is exactly the
    value sec2ttl() used."""

    def __init__(self):
        self.last = None

    def __call__(self, conn, cursor, statement, parameters, context, executemany):
        if "INSERT INTO cache" not in statement:
            return
        key = parameters["key"]
        cur = cursor.connection.cursor()
        cur.execute(
            "SELECT now()::text, now()::timestamp::text, current_setting('TimeZone'),"
            "       ttl::text, (ttl - now()::timestamp)::text,"
            "       EXTRACT(EPOCH FROM (ttl - now()::timestamp))::text"
            "  FROM cache WHERE key = %s",
            (key,),
        )
        row = cur.fetchone()
        cur.close()
        self.last = {
            "key": key,
            "now_text": row[0],
            "now_local_text": row[1],
            "session_timezone": row[2],
            "ttl_text": row[3],
            "ttl_minus_now_text": row[4],
            "ttl_minus_now_epoch_seconds": row[5],
        }


def record_postgresql(srv, out):
    url = f"postgresql://postgres@127.0.0.1:{srv.pg_port}/postgres"
    rec = PGNowRecorder()
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "after_cursor_execute", rec)

    cache = kpostgresql.load_from_config(config({
        "cache_backend": "kinto.core.cache.postgresql",
        "cache_url": url,
        "cache_prefix": "kinto:",
    }))
    cache.initialize_schema()
    cache.flush()

    raw = psycopg2.connect(host="127.0.0.1", port=srv.pg_port, user="postgres", dbname="postgres")
    raw.autocommit = True
    rc = raw.cursor()
    rc.execute("SHOW server_version")
    server_version = rc.fetchone()[0]
    rc.execute("SHOW TimeZone")
    server_tz = rc.fetchone()[0]

    def raw_row(full_key):
        rc.execute("SELECT key, value, ttl::text FROM cache WHERE key = %s", (full_key,))
        return rc.fetchone()

    rows = []
    ttl_after_set = []
    plan = [
        ("ttl-0.25s", "short", 0.25),
        ("ttl-61s", {"x": "é", "n": [1, 2.5, None]}, 61),
        ("ttl-3600s", "an hour", 3600),
        ("ttl-40d", 2**70, 40 * DAY),
        ("heartbeat-like", "alive", 3600),
    ]
    for key, value, ttl in plan:
        rec.last = None
        cache.set(key, value, ttl)
        ret = cache.ttl(key)  # right after set (the EXTRACT(SECOND ...) bug)
        rc.execute(
            "SELECT EXTRACT(EPOCH FROM (ttl - now()))::text FROM cache WHERE key = %s",
            ("kinto:" + key,),
        )
        epoch_remaining = rc.fetchone()[0]
        k, v, t = raw_row("kinto:" + key)
        assert rec.last and rec.last["key"] == k and rec.last["ttl_text"] == t
        rows.append({
            "key": key,
            "full_key": k,
            "set_ttl_seconds": ttl,
            "value_json": value,
            "value": v,
            "ttl_text": t,
            "now_text": rec.last["now_text"],
            "now_local_text": rec.last["now_local_text"],
            "session_timezone": rec.last["session_timezone"],
            "ttl_minus_now_text": rec.last["ttl_minus_now_text"],
            "ttl_minus_now_epoch_seconds": rec.last["ttl_minus_now_epoch_seconds"],
        })
        ttl_after_set.append({
            "key": key,
            "set_ttl_seconds": ttl,
            "kinto_ttl_returned": str(ret),
            "kinto_ttl_python_type": type(ret).__name__,
            "true_remaining_epoch_seconds": epoch_remaining,
        })

    # Same thing from a session whose TimeZone is not UTC: ttl is stored as a
    # local TIMESTAMP WITHOUT TIME ZONE in the writer's session zone.
    tz_url = url + "?options=-c%20TimeZone%3DAmerica/New_York"
    cache_ny = kpostgresql.load_from_config(config({
        "cache_backend": "kinto.core.cache.postgresql",
        "cache_url": tz_url,
        "cache_prefix": "kinto:",
    }))
    other_tz_rows = []
    for key, value, ttl in [("ny-ttl-3600s", "from new york", 3600)]:
        rec.last = None
        cache_ny.set(key, value, ttl)
        k, v, t = raw_row("kinto:" + key)
        assert rec.last and rec.last["ttl_text"] == t
        other_tz_rows.append({
            "key": key,
            "full_key": k,
            "set_ttl_seconds": ttl,
            "value_json": value,
            "value": v,
            "ttl_text": t,
            "now_text": rec.last["now_text"],
            "now_local_text": rec.last["now_local_text"],
            "session_timezone": rec.last["session_timezone"],
            "ttl_minus_now_text": rec.last["ttl_minus_now_text"],
            "ttl_minus_now_epoch_seconds": rec.last["ttl_minus_now_epoch_seconds"],
        })

    rc.execute("SELECT pg_get_functiondef('sec2ttl(double precision)'::regprocedure)")
    sec2ttl_def = rc.fetchone()[0]
    rc.execute(
        "SELECT column_name, data_type, character_maximum_length, column_default, is_nullable"
        "  FROM information_schema.columns WHERE table_name = 'cache' ORDER BY ordinal_position"
    )
    columns = [
        {"name": r[0], "data_type": r[1], "character_maximum_length": r[2],
         "column_default": r[3], "is_nullable": r[4]}
        for r in rc.fetchall()
    ]

    sqlalchemy.event.remove(sqlalchemy.engine.Engine, "after_cursor_execute", rec)
    cache.flush()
    raw.close()

    dump(os.path.join(out, "postgresql.json"), {
        "recorded_at_utc": utc_now_iso(),
        "kinto_version": dist_version("kinto"),
        "server_version": server_version,
        "server_timezone": server_tz,
        "cache_prefix": "kinto:",
        "notes": [
            "value is the exact TEXT column; ttl_text is ttl::text (TIMESTAMP WITHOUT TIME ZONE, "
            "local time of the writing session's TimeZone).",
            "now_text/now_local_text/ttl_minus_now_* were read inside the same transaction as "
            "Kinto's INSERT, so now() is exactly the instant sec2ttl() used.",
            "kinto_ttl_after_set is what Kinto's ttl() returned right after set(): only the "
            "SECOND field of the interval (EXTRACT(SECOND ...) bug); true_remaining_epoch_seconds "
            "is EXTRACT(EPOCH ...) read a moment later from another connection.",
        ],
        "table_columns": columns,
        "sec2ttl_definition": sec2ttl_def,
        "rows": sorted(rows, key=lambda r: r["key"]),
        "rows_other_session_timezone": other_tz_rows,
        "kinto_ttl_after_set": sorted(ttl_after_set, key=lambda r: r["key"]),
    })
    return server_version


def record_values(srv, out):
    """Same values through PostgreSQL, Redis and memcached; the stored text must agree."""
    pg = kpostgresql.load_from_config(config({
        "cache_backend": "kinto.core.cache.postgresql",
        "cache_url": f"postgresql://postgres@127.0.0.1:{srv.pg_port}/postgres",
        "cache_prefix": "kinto:",
    }))
    rd = kredis.load_from_config(config({
        "cache_backend": "kinto.core.cache.redis",
        "cache_url": f"redis://127.0.0.1:{srv.redis_port}/0",
        "cache_prefix": "kinto:",
    }))
    mc = kmemcached.load_from_config(config({
        "cache_backend": "kinto.core.cache.memcached",
        "cache_hosts": f"127.0.0.1:{srv.mc_ports[0]}",
        "cache_prefix": "kinto:",
    }))
    raw_pg = psycopg2.connect(host="127.0.0.1", port=srv.pg_port, user="postgres", dbname="postgres")
    raw_pg.autocommit = True
    rc = raw_pg.cursor()
    raw_redis = redislib.Redis(host="127.0.0.1", port=srv.redis_port, db=0)

    cases = []
    for name, value in VALUE_CASES:
        key = "values/" + name
        pg.set(key, value, 3600)
        rd.set(key, value, 3600)
        mc.set(key, value, 3600)
        rc.execute("SELECT value FROM cache WHERE key = %s", ("kinto:" + key,))
        encoded = rc.fetchone()[0]
        redis_text = raw_redis.get("kinto:" + key).decode("utf-8")
        assert redis_text == encoded, (name, redis_text, encoded)
        flags, mc_data = mc_get(srv.mc_ports[0], ("kinto:" + key).encode("utf-8"))
        assert flags == 16
        mc_text = mc_data.decode("utf-8")
        assert mc_text.startswith('{"value":' + encoded + ',"ttl":'), (name, mc_text)
        assert encoded == kjson.dumps(value)
        # What Kinto's get() hands back (json.loads with NM_NATIVE): not always
        # the value that was set (ints beyond the i64/u64 range become floats).
        decoded = kjson.loads(encoded)
        for backend in (pg, rd, mc):
            got = backend.get(key)
            assert same_value(got, decoded), (name, backend, got, decoded)
        cases.append({
            "name": name,
            "python_type": type(value).__name__,
            "value_json": value,
            "encoded": encoded,
            "decoded_python_type": type(decoded).__name__,
            "decoded_json": decoded,
            "round_trips": same_value(decoded, value),
        })

    # psql (unaligned, no escaping) sees the very same text.
    sep, rsep = "\x1f", "\x1e"
    psql = subprocess.run(
        [f"{PG_BIN}/psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(srv.pg_port),
         "-U", "postgres", "-d", "postgres", "-F", sep, "-R", rsep,
         "-c", "SELECT key, value FROM cache WHERE key LIKE 'kinto:values/%'"],
        check=True, capture_output=True, env={**os.environ, "PGCLIENTENCODING": "UTF8"},
    ).stdout.decode("utf-8")
    psql_rows = dict(r.split(sep, 1) for r in psql.rstrip("\n").split(rsep) if r)
    for c in cases:
        assert psql_rows["kinto:values/" + c["name"]] == c["encoded"], c["name"]

    pg.flush()
    rd.flush()
    mc.flush()
    raw_pg.close()

    dump(os.path.join(out, "values.json"), sorted(cases, key=lambda c: c["name"]))


def record_redis(srv, out):
    cache = kredis.load_from_config(config({
        "cache_backend": "kinto.core.cache.redis",
        "cache_url": f"redis://127.0.0.1:{srv.redis_port}/0",
        "cache_prefix": "kinto:",
    }))
    raw = redislib.Redis(host="127.0.0.1", port=srv.redis_port, db=0)
    cache.flush()
    server_version = raw.info("server")["redis_version"]
    writes = []
    plan = [
        ("ttl-0.5s", "half a second", 0.5),
        ("ttl-1.9s", [1, 2], 1.9),
        ("ttl-61s", {"x": "é☃"}, 61),
        ("ttl-3600s", None, 3600),
        ("ttl-40d", 2**70, 40 * DAY),
        ("ttl-0.0015s", "sub-2ms", 0.0015),
    ]
    for key, value, ttl in plan:
        cache.set(key, value, ttl)
        pipe = raw.pipeline(transaction=True)
        pipe.pttl("kinto:" + key)
        pipe.get("kinto:" + key)
        pipe.type("kinto:" + key)
        pttl, got, typ = pipe.execute()
        writes.append({
            "key": key,
            "full_key": "kinto:" + key,
            "set_ttl_seconds": ttl,
            "psetex_milliseconds": int(ttl * 1000),
            "value_json": value,
            "raw_get": got.decode("utf-8") if got is not None else None,
            "redis_type": typ.decode(),
            "pttl_after_set": pttl,
            "kinto_ttl_after_set": cache.ttl(key),
        })
    errors = []
    for key, ttl in [("ttl-0", 0), ("ttl-0.0005", 0.0005), ("ttl-negative", -5)]:
        try:
            cache.set(key, "x", ttl)
            errors.append({"key": key, "set_ttl_seconds": ttl, "error": None,
                           "exists": bool(raw.exists("kinto:" + key))})
        except Exception as e:  # kinto BackendError wrapping redis ResponseError
            orig = getattr(e, "original", None)
            errors.append({"key": key, "set_ttl_seconds": ttl,
                           "error": type(e).__name__,
                           "original": f"{type(orig).__name__}: {orig}" if orig else None,
                           "exists": bool(raw.exists("kinto:" + key))})
    cache.flush()
    dump(os.path.join(out, "redis.json"), {
        "recorded_at_utc": utc_now_iso(),
        "kinto_version": dist_version("kinto"),
        "redis_py_version": dist_version("redis"),
        "server_version": server_version,
        "cache_prefix": "kinto:",
        "notes": [
            "Kinto writes PSETEX <prefix+key> int(ttl*1000) <json>; raw_get is the plain JSON text "
            "(no envelope); pttl_after_set was read right after Kinto's set.",
            "kinto_ttl_after_set is Kinto's ttl() (Redis TTL: rounded to the nearest second).",
        ],
        "writes": sorted(writes, key=lambda w: w["key"]),
        "set_errors": errors,
    })
    return server_version


class MCWireRecorder:
    """Wrap python-memcached's _Host.send_cmd to capture the exact command line and server."""

    def __init__(self):
        self.sent = []
        self._orig = memcache._Host.send_cmd
        rec = self

        def send_cmd(host, cmd):
            data = cmd.encode("utf8") if isinstance(cmd, str) else cmd
            rec.sent.append((host.port, data))
            return rec._orig(host, cmd)

        memcache._Host.send_cmd = send_cmd

    def restore(self):
        memcache._Host.send_cmd = self._orig


class TimeRecorder:
    """Replace kinto.core.cache.memcached.time to capture the client time Kinto used."""

    def __init__(self):
        self.values = []
        self._orig = kmemcached.time

        def fake_time():
            t = self._orig()
            self.values.append(t)
            return t

        kmemcached.time = fake_time

    def restore(self):
        kmemcached.time = self._orig


PLACEMENT_KEYS = [
    "a",
    "b",
    "z",
    "0",
    "42",
    "1234567890",
    "foobar",
    "__heartbeat__",
    "kinto:__heartbeat__",
    "kinto:abc",
    "kinto:",
    "kinto:/buckets/default/collections/tasks",
    "kinto:records-timestamps",
    "user:123",
    "key-1",
    "key_2",
    "key.3",
    "CamelCaseKey",
    "UPPER",
    "~",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "é",
    "kinto:é☃",
    "kinto:ü/ß",
    "😀",
    "ключ",
    "x" * 250,
    "kinto:" + "y" * 244,
    "é" * 125,
    "kinto:" + "0123456789" * 10,
]


def record_memcached(srv, out):
    server_version = mc_version(srv.mc_ports[0])
    wire = MCWireRecorder()
    clock = TimeRecorder()
    try:
        cache = kmemcached.load_from_config(config({
            "cache_backend": "kinto.core.cache.memcached",
            "cache_hosts": f"127.0.0.1:{srv.mc_ports[0]}",
            "cache_prefix": "kinto:",
        }))
        cache.flush()
        writes = []
        plan = [
            ("ttl-0", "never expires", 0),
            ("ttl-0.5s", "half", 0.5),
            ("ttl-1.9s", [1, 2], 1.9),
            ("ttl-61s", {"x": "é☃", "e": "😀"}, 61),
            ("ttl-3600s", "alive", 3600),
            ("ttl-3600s-null", None, 3600),
            ("ttl-3600s-bigint", 2**70, 3600),
            ("ttl-30d", "thirty days", 30 * DAY),
            ("ttl-30d-plus-1s", "thirty days + 1s", 30 * DAY + 1),
            ("ttl-40d", "forty days", 40 * DAY),
            ("ttl-negative-5s", "negative", -5),
        ]
        for key, value, ttl in plan:
            full = ("kinto:" + key).encode("utf-8")
            wire.sent.clear()
            clock.values.clear()
            cache.set(key, value, ttl)
            assert len(clock.values) == 1
            client_time = clock.values[0]
            sets = [d for _, d in wire.sent if d.startswith(b"set ")]
            assert len(sets) == 1
            cmd_line, _, payload = sets[0].partition(b"\r\n")
            stored = mc_get(srv.mc_ports[0], full)
            meta = mc_meta_ttl(srv.mc_ports[0], full)
            clock.values.clear()
            kinto_ttl = cache.ttl(key) if stored is not None else None
            ttl_clock = clock.values[0] if clock.values else None
            writes.append({
                "key": key,
                "full_key": full.decode("utf-8"),
                "set_ttl_seconds": ttl,
                "value_json": value,
                "client_time": client_time,
                "wire_command_line": cmd_line.decode("utf-8"),
                "wire_payload": payload.decode("utf-8"),
                "stored": stored is not None,
                "raw_value": stored[1].decode("utf-8") if stored else None,
                "raw_value_len": len(stored[1]) if stored else None,
                "flags": stored[0] if stored else None,
                "server_remaining_ttl_after_set": meta["t"] if meta else None,
                "kinto_ttl_after_set": kinto_ttl,
                "kinto_ttl_client_time": ttl_clock,
            })
        cache.flush()

        # Key placement: 2 servers, then 3 servers.
        placements = {}
        for n in (2, 3):
            while len(srv.mc_ports) < n:
                srv.start_memcached()
            ports = srv.mc_ports[:n]
            c = kmemcached.load_from_config(config({
                "cache_backend": "kinto.core.cache.memcached",
                "cache_hosts": " ".join(f"127.0.0.1:{p}" for p in ports),
                "cache_prefix": "",
            }))
            c.flush()
            for key in PLACEMENT_KEYS:
                kb = key.encode("utf-8")
                wire.sent.clear()
                c.set(key, key, 3600)
                chosen = [p for p, d in wire.sent if d.startswith(b"set ")]
                found = [i for i, p in enumerate(ports) if mc_get(p, kb) is not None]
                assert len(found) == 1, (key, found)
                assert [ports.index(p) for p in chosen] == found, (key, chosen, found)
                assert c.get(key) == key
                h = memcache.cmemcache_hash(kb)
                assert h % n == found[0], (key, h, n, found)
                placements.setdefault(key, {})[f"server_index_{n}"] = found[0]
            c.flush()
    finally:
        wire.restore()
        clock.restore()

    placement = []
    for key in PLACEMENT_KEYS:
        kb = key.encode("utf-8")
        placement.append({
            "key": key,
            "key_utf8_len": len(kb),
            "cmemcache_hash": memcache.cmemcache_hash(kb),
            "server_index_2": placements[key]["server_index_2"],
            "server_index_3": placements[key]["server_index_3"],
        })

    dump(os.path.join(out, "memcached.json"), {
        "recorded_at_utc": utc_now_iso(),
        "kinto_version": dist_version("kinto"),
        "python_memcached_version": dist_version("python-memcached"),
        "server_version": server_version,
        "cache_prefix": "kinto:",
        "notes": [
            "raw_value/flags come from a raw `get` on the server; wire_command_line/wire_payload "
            "are exactly what python-memcached sent (set <key> <flags> <exptime> <bytes>).",
            "client_time is the time.time() value Kinto used for the envelope "
            "(envelope ttl = ceil(client_time + set_ttl_seconds)).",
            "server_remaining_ttl_after_set is memcached's own remaining TTL from meta get "
            "`mg <key> t` (-1 = never expires); stored=false means the item was not there right "
            "after set (exptime > 30 days is an absolute Unix time in the past, or negative).",
            "placement: keys are the full stored keys (cache_prefix \"\"); server_index_N is the "
            "index in the cache_hosts list of N servers holding the key, found by asking every "
            "server with a raw get (and equal to cmemcache_hash % N, with "
            "cmemcache_hash = ((crc32(utf8 key) & 0xffffffff) >> 16) & 0x7fff).",
        ],
        "writes": sorted(writes, key=lambda w: w["key"]),
        "placement": sorted(placement, key=lambda p: p["key"]),
    })
    return server_version


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    srv = Servers()
    try:
        srv.start_postgresql()
        srv.start_memcached()
        srv.start_redis()
        pg_version = record_postgresql(srv, args.out)
        record_values(srv, args.out)
        redis_version = record_redis(srv, args.out)
        mc_version_ = record_memcached(srv, args.out)
    finally:
        srv.stop_all()

    print("kinto", dist_version("kinto"))
    print("python-memcached", dist_version("python-memcached"))
    print("redis-py", dist_version("redis"))
    print("python-rapidjson", dist_version("python-rapidjson"))
    print("SQLAlchemy", dist_version("SQLAlchemy"), "psycopg2", dist_version("psycopg2-binary"))
    print("python", sys.version.split()[0])
    print("postgresql", pg_version, "memcached", mc_version_, "redis", redis_version)


if __name__ == "__main__":
    main()
