"""The WSGI entry point: `gunicorn -c gunicorn.conf.py app:app`. The server is the package lipsync_server
(routes and `create_app` in lipsync_server/app.py); this module only makes its app, in each worker.
"""

from lipsync_server.app import create_app

app = create_app()
