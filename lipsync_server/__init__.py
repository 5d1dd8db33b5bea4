"""The HTTP server over the library: the Flask app (`app.create_app`), request bodies, admission, streamed
replies, async jobs over HTTP, the drop-in routes, metrics and logs. `gunicorn -c gunicorn.conf.py app:app`
serves it (the repository's app.py).

It imports the library (wav2lip_core) and the stores (lipsync_stores); neither imports it
(tests/core/test_layout.py). Nothing is imported here: gunicorn's master reads `lipsync_server.logs` for its
log format, and only the workers make the app.
"""
