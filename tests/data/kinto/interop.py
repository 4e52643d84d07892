#!/usr/bin/env python3
"""Check that kcache and Kinto 26.5 read each other's cache entries (dev tool).

Not run by the Rust tests (they must not need Python); run by hand against the test
servers, with the Python of a virtualenv that has Kinto installed:

    scripts/test --servers-only > /tmp/rig.env &    # then: source /tmp/rig.env
    cargo build --release
    /tmp/kinto-venv/bin/python tests/data/kinto/interop.py [postgresql] [memcached] [redis]

For each backend it writes every value of values.json with several TTLs through Kinto's own
backend class and reads them with `kcache get --json` / `kcache ttl --ms`, then the reverse
(`kcache set --json`, read by Kinto's `get()`/`ttl()`), and prints one line per check. TTLs
must agree within one second. Exit status 0 when every check passed.
"""

import json
import logging
import math
import os
import subprocess
import sys
import time
import uuid
import warnings

warnings.simplefilter("ignore")
logging.disable(logging.CRITICAL)

from pyramid import testing  # noqa: E402

from kinto.core.cache import memcached as kmemcached  # noqa: E402
from kinto.core.cache import postgresql as kpostgresql  # noqa: E402
from kinto.core.cache import redis as kredis  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
KCACHE = os.environ.get("KCACHE", os.path.join(ROOT, "target", "release", "kcache"))
TTLS = [61, 3600, 40 * 86400]
failures = 0


def same(a, b):
    if type(a) is not type(b):
        # Kinto itself reads integers beyond 64 bits back as floats (values.json README).
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b)
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def check(ok, what):
    global failures
    if not ok:
        failures += 1
    print(("ok   " if ok else "FAIL ") + what)


def kcache(env, *args, stdin=None):
    p = subprocess.run([KCACHE, *args], env=env, input=stdin, capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def config(settings):
    cfg = testing.setUp()
    cfg.add_settings(settings)
    return cfg


def cases():
    with open(os.path.join(HERE, "values.json")) as f:
        return [c for c in json.load(f) if c.get("round_trips")]


def run(name, cache, env):
    prefix = f"interop-{uuid.uuid4().hex[:8]}:"
    env = dict(env, KINTO_CACHE_PREFIX=prefix)
    cache.prefix = prefix
    values = cases()
    # Kinto writes, kcache reads. Kinto's memcached entries over 30 days expire at once (its
    # defect, reference 11.21): nothing to read there.
    kinto_ttls = [t for t in TTLS if not (name.startswith("memcached") and t > 30 * 86400)]
    for i, c in enumerate(values):
        ttl = kinto_ttls[i % len(kinto_ttls)]
        key = f"k{i}"
        cache.set(key, c["decoded_json"] if "decoded_json" in c else c["value_json"], ttl)
        code, out, err = kcache(env, "get", "--json", key)
        got = json.loads(out) if code == 0 else err.strip()
        check(code == 0 and same(got, c["value_json"]), f"{name}: kinto set {c['name']} -> kcache get")
        code, out, err = kcache(env, "ttl", "--ms", key)
        ms = int(out) if code == 0 else -999
        check(abs(ms / 1000 - ttl) <= 1, f"{name}: kinto ttl {ttl} -> kcache ttl {ms / 1000:.3f}")
    # kcache writes, Kinto reads.
    for i, c in enumerate(values):
        ttl = TTLS[i % len(TTLS)]
        key = f"r{i}"
        code, _, err = kcache(env, "set", "--json", key, "-", str(ttl), stdin=c["encoded"])
        if code != 0:
            check(False, f"{name}: kcache set {c['name']}: {err.strip()}")
            continue
        got = cache.get(key)
        check(same(got, c["value_json"]), f"{name}: kcache set {c['name']} -> kinto get")
        if name != "postgresql":  # Kinto's PostgreSQL ttl() reports only the seconds field
            check(abs(float(cache.ttl(key)) - ttl) <= 1, f"{name}: kcache ttl {ttl} -> kinto ttl {cache.ttl(key)}")
    # Expiry: a 1 s entry written by kcache is gone for Kinto after 1.2 s, and the reverse.
    kcache(env, "set", "short", "x", "1")
    cache.set("short2", "x", 1)
    time.sleep(1.2)
    if not name.startswith("memcached"):
        # Kinto's memcached get ignores the envelope's time and relies on the server's expiry,
        # which kcache sets up to 2 s later (never earlier) than the envelope's.
        check(cache.get("short") is None, f"{name}: kcache 1 s entry expired for kinto")
    check(kcache(env, "get", "short2")[0] == 1, f"{name}: kinto 1 s entry expired for kcache")


def main():
    wanted = sys.argv[1:] or ["postgresql", "memcached", "redis"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KINTO_", "CACHE_"))}
    if "postgresql" in wanted:
        url = os.environ["KCACHE_TEST_PG_URL"]
        cache = kpostgresql.load_from_config(config({"cache_url": url, "cache_prefix": ""}))
        cache.initialize_schema()
        run("postgresql", cache, dict(base, KINTO_CACHE_BACKEND="postgresql", KINTO_CACHE_URL=url))
    if "memcached" in wanted:
        for hosts in (os.environ["KCACHE_TEST_MEMCACHED"].split(",")[:1], os.environ["KCACHE_TEST_MEMCACHED"].split(",")):
            cache = kmemcached.load_from_config(config({"cache_hosts": " ".join(hosts), "cache_prefix": ""}))
            env = dict(base, KINTO_CACHE_BACKEND="memcached", KINTO_CACHE_HOSTS=",".join(hosts))
            run(f"memcached x{len(hosts)}", cache, env)
    if "redis" in wanted:
        url = os.environ["KCACHE_TEST_REDIS_URL"]
        cache = kredis.load_from_config(config({"cache_url": url, "cache_prefix": ""}))
        run("redis", cache, dict(base, KINTO_CACHE_BACKEND="redis", KINTO_CACHE_URL=url))
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
