"""Kernex core: the pure domain shared by the server, the agent and the CLI.

Fleet model, validation, resolution and plan; the manifest and envelope formats; keys,
signatures and the device request-signing profile. It takes bytes and objects and returns
objects: no HTTP, no database, no Git, and no clock reads it is not handed.
"""

__version__ = "0.1.0"
