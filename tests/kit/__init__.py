"""The test kit: the shared pieces every test layer uses, one module each.

fleet      FleetRepo (a real fleet repository in a temp dir), the bundle catalog, fleet bytes
git        plain Git repositories in temp dirs and a quiet HOME, for the Git edge's tests
bundles    bundle_source / bundle_bytes: the one bundle builder (the CLI's build code)
server     running_server (real uvicorn on loopback), InProcessServer (TestClient)
admin      the admin bearer header
cli        Kernex: `kernex ...` through CliRunner against a running server
device     SimDevice (signed device requests), verify_manifest, Responder
simulator  ServerSimulator (the device plane in memory) and LoopbackServer (on a socket)
agent      Device (an enrolled agent against the simulator), data-dir snapshots
apicheck   every answer checked against /openapi.json
alertsink  a webhook receiver for alert tests
manifests  manifests and verifiers for the core's unit tests
durations  the duration grammar's examples
wait       wait_for: poll a condition with a deadline instead of sleeping
"""
