"""Replay checks across server processes: what the shared nonce table costs a request.

Several servers on one PostgreSQL claim the nonce of every state-changing device request
(enrollment, status report) in the shared ``request_nonces`` table
(``kernex_server.nonces``); every request, GETs included, is checked against the
process's in-memory cache first. This measures, in one run and per request:

- the in-memory check (``httpsig.NonceCache``), what a GET costs for replays;
- the shared claim (one ``INSERT ... ON CONFLICT DO NOTHING`` on an UNLOGGED table);
- a whole ``verify_request`` of a signed status report (Ed25519 and all), alone and
  followed by the shared claim, which is what a POST now costs.

Needs PostgreSQL; it works in a schema of its own, dropped at the end.

    KERNEX_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        python bench/nonces.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from collections.abc import Callable
from itertools import count

import sqlalchemy as sa

from kernex_core import httpsig, keys
from kernex_server.database import make_engine, migrate
from kernex_server.nonces import SharedNonces

PATH = "/v1/devices/dev-1/status"
BODY = b'{"phase":"healthy","serial":3,"bundles":{"app":"1.4.0"}}'


def per_call_us(fn: Callable[[], object], rounds: int) -> float:
    fn()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(rounds):
            fn()
        best = min(best, (time.perf_counter() - start) / rounds)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--database-url", default=os.environ.get("KERNEX_TEST_DATABASE_URL"))
    args = parser.parse_args()
    if not args.database_url:
        sys.exit("error: needs PostgreSQL\nhint: set KERNEX_TEST_DATABASE_URL or --database-url")
    schema = f"kx_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(args.database_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    engine = make_engine(args.database_url, schema=schema)
    try:
        migrate(engine, schema=schema)
        run(engine, args.rounds)
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def run(engine: sa.Engine, rounds: int) -> None:
    key = keys.generate_ed25519()
    public = key.public_key()
    now = int(time.time())
    numbers = count()
    memory = httpsig.NonceCache()
    shared = SharedNonces(engine, window_seconds=600)

    def in_memory() -> None:
        memory.check_and_remember("dev-1", f"n{next(numbers)}", now)

    def claim() -> None:
        assert shared.claim("dev-1", f"n{next(numbers)}", now)

    signed = [
        {
            k.lower(): v
            for k, v in httpsig.sign_request("POST", PATH, BODY, key, "dev-1", created=now).items()
        }
        for _ in range(rounds * 3 + 2)
    ]
    requests = iter(signed * 2)
    verify_cache = httpsig.NonceCache(window_seconds=10**9)

    def verify(headers: dict[str, str]) -> httpsig.ParsedSignature:
        return httpsig.verify_request(
            "POST", PATH, headers, BODY, lambda _kid: public, now=now, nonces=verify_cache
        )

    def verify_only() -> None:
        verify(next(requests))

    def verify_and_claim() -> None:
        parsed = verify(next(requests))
        assert shared.claim(parsed.keyid, parsed.nonce, now)

    rows = [
        ("in-memory nonce check", per_call_us(in_memory, rounds)),
        ("shared nonce claim", per_call_us(claim, rounds)),
        ("verify_request", per_call_us(verify_only, rounds)),
    ]
    verify_cache = httpsig.NonceCache(window_seconds=10**9)  # the same requests, fresh
    rows.append(("verify + shared claim", per_call_us(verify_and_claim, rounds)))
    base = rows[0][1]
    print(f"{'check':<24}{'us/call':>10}{'x in-memory':>13}")
    for name, us in rows:
        print(f"{name:<24}{us:>10.1f}{us / base:>12.1f}x")
    verify_us, both_us = rows[2][1], rows[3][1]
    print(
        f"shared claim = {rows[1][1] / base:.0f}x the in-memory check; a signed POST costs "
        f"{both_us / verify_us:.2f}x what it cost with the in-memory check alone "
        "(GETs are unchanged)"
    )


if __name__ == "__main__":
    main()
