"""A small valid fleet as bytes, for the fleet model's unit tests."""

from __future__ import annotations

import textwrap

SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_C = "c" * 64


def y(text: str) -> bytes:
    return textwrap.dedent(text).lstrip("\n").encode()


def base_files() -> dict[str, bytes]:
    return {
        "kernex.yaml": y(
            """
            apiVersion: kernex/v1
            name: test-fleet
            policies:
              offline_after: 2m
              manifest_ttl: 1d
            defaults:
              bundles:
                app: 1.0.0
              config:
                app:
                  level: info
                  port: 8080
            rollout:
              waves: [50%, 100%]
              failure_threshold: 5%
            """
        ),
        "bundles/app.yaml": y(
            f"""
            name: app
            versions:
              1.0.0: {{sha256: {SHA_A}, size: 10}}
              1.1.0: {{sha256: {SHA_B}, size: 11}}
            """
        ),
        "bundles/tools.yaml": y(
            f"""
            name: tools
            versions:
              "2.0": {{sha256: {SHA_C}, size: 5, url: "https://example.com/t.tgz"}}
            """
        ),
        "groups/canary.yaml": y(
            """
            selector: ring=canary
            priority: 10
            bundles:
              app: 1.1.0
            config:
              app:
                level: debug
            rollout:
              waves: [5%, 25%, 100%]
              promotion: manual
            """
        ),
        "groups/lab.yaml": y(
            """
            selector: site in (lab, bench), !retired
            priority: 20
            bundles:
              tools: "2.0"
            config:
              app:
                port: null
                extra: {x: 1}
            """
        ),
        "devices/dev-1.yaml": y(
            """
            labels:
              ring: canary
            key_fingerprint: SHA256:DmEBkR4rbMG/WvvC93zpmubNIIs6wE8FywsbcP4elL4
            """
        ),
        "devices/dev-2.yaml": y(
            """
            labels:
              site: lab
            bundles:
              app: 1.0.0
            config:
              app:
                level: warning
            """
        ),
    }
