"""Kernex server: reconciles the fleet repository into a database and serves devices."""
