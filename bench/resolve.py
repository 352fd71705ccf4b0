"""Fleet model speed: load + validate + resolve, and plan, against a bare libyaml parse.

A fleet of 10,000 device files and 100 groups is generated in memory. Targets:
load+validate+resolve <= 2.0x the bare ``yaml.load(..., Loader=yaml.CSafeLoader)`` of
the same files; compute_plan of two revisions (one group bumped) < 3x the bare parse of
one revision. Figures are printed whether or not they meet the targets.

    python bench/resolve.py [--devices N] [--groups N] [--repeat N]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time
from collections.abc import Callable

import yaml

from kernex_core.fleet import compute_plan, load_fleet

REGIONS = ["eu", "us", "ap", "sa", "af"]
RINGS = ["canary", "beta", "stable"]
HARDWARE = ["rpi4", "rpi5", "jetson", "x86"]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_fleet(devices: int, groups: int, *, bump: bool = False) -> dict[str, bytes]:
    rng = random.Random(7)  # the same fleet every run
    files: dict[str, bytes] = {
        "kernex.yaml": (
            b"apiVersion: kernex/v1\nname: bench\npolicies: {offline_after: 5m, manifest_ttl: 7d}\n"
            b"defaults:\n  bundles: {app: 1.0.0}\n  config:\n    app: {level: info, port: 8080}\n"
            b"rollout: {waves: [10%, 100%], failure_threshold: 10%, pause: 5m}\n"
        )
    }
    for b in range(20):
        versions = "".join(
            f"  {v}.0.0: {{sha256: {sha(f'b{b}v{v}')}, size: {1000 + v}}}\n" for v in range(1, 6)
        )
        name = "app" if b == 0 else f"bundle{b}"
        files[f"bundles/{name}.yaml"] = f"name: {name}\nversions:\n{versions}".encode()
    sites = [f"site-{i}" for i in range(groups)]
    for g in range(groups):
        kind = g % 4
        if kind == 0:
            selector = f"site={sites[g]}"
        elif kind == 1:
            selector = f"region={REGIONS[g % 5]}, ring in (beta, stable), !retired"
        elif kind == 2:
            selector = f"hw={HARDWARE[g % 4]}, site notin (site-0)"
        else:
            selector = f"ring={RINGS[g % 3]}, region in ({REGIONS[g % 5]}, {REGIONS[(g + 1) % 5]})"
        version = 2 if not (bump and g == 1) else 3
        files[f"groups/g{g:03d}.yaml"] = (
            f"selector: '{selector}'\npriority: {g}\n"
            f"bundles:\n  bundle{g % 19 + 1}: {version}.0.0\n"
            f"config:\n  app:\n    group_{g}: {{enabled: true, limit: {g}}}\n"
        ).encode()
    for d in range(devices):
        labels = (
            f"  region: {rng.choice(REGIONS)}\n  ring: {rng.choice(RINGS)}\n"
            f"  site: {rng.choice(sites)}\n  hw: {rng.choice(HARDWARE)}\n"
        )
        extra = "bundles:\n  app: 2.0.0\n" if d % 50 == 0 else ""
        extra += "config:\n  app: {level: debug}\n" if d % 20 == 0 else ""
        files[f"devices/dev-{d:05d}.yaml"] = (
            f"labels:\n{labels}key_fingerprint: SHA256:{'A' * 43}\n{extra}"
        ).encode()
    return files


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    base = make_fleet(args.devices, args.groups)
    head = make_fleet(args.devices, args.groups, bump=True)
    size = sum(len(v) for v in base.values())
    print(f"fleet: {args.devices} devices, {args.groups} groups, {len(base)} files, {size} bytes")

    def bare_parse() -> None:
        for raw in base.values():
            yaml.load(raw, Loader=yaml.CSafeLoader)

    def load_resolve() -> None:
        load_fleet(base).resolve({})

    base_states = load_fleet(base).resolve({})
    head_states = load_fleet(head).resolve({})

    def plan() -> None:
        compute_plan(base_states, head_states)

    parse_t = best_of(args.repeat, bare_parse)
    resolve_t = best_of(args.repeat, load_resolve)
    plan_t = best_of(args.repeat, plan)
    changed = len(compute_plan(base_states, head_states).devices)
    print(f"bare CSafeLoader parse:       {parse_t * 1000:8.1f} ms")
    ratio = resolve_t / parse_t
    verdict = "ok" if ratio <= 2.0 else "MISSES the 2.0x target"
    print(f"load + validate + resolve:    {resolve_t * 1000:8.1f} ms  {ratio:.2f}x  {verdict}")
    ratio = plan_t / parse_t
    verdict = "ok" if ratio < 3.0 else "MISSES the 3x target"
    print(
        f"compute_plan ({changed} devices change): {plan_t * 1000:6.1f} ms  {ratio:.2f}x  {verdict}"
    )


if __name__ == "__main__":
    main()
