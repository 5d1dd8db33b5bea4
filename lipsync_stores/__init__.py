"""Shared state of the workers and replicas: registered avatars and async jobs, on this machine (a directory,
SQLite) or in Redis (`REDIS_URL`), each pair behind one small interface; `backend` opens what the settings choose.

It imports only the library (errors, config, schema), never the server (tests/core/test_layout.py).
"""
