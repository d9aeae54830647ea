"""gunicorn settings for the reader.

    gunicorn -c serve/gunicorn.conf.py "serve.app:create_app()"

RECS_SERVE_BIND overrides the address (default 127.0.0.1:8000). Preload stays off so
that each worker opens its own database connections after the fork.
"""

import os

bind = os.environ.get("RECS_SERVE_BIND", "127.0.0.1:8000")
workers = 2
worker_class = "gthread"
threads = 4
timeout = 30
graceful_timeout = 10
keepalive = 5
preload_app = False
# Room for ``exclude`` lists of a few hundred ids in the query string (8190 is the most).
limit_request_line = 8190
accesslog = None
errorlog = "-"
loglevel = "info"
# gunicorn >= 25.1 opens a control socket at one path per user: two readers on one host
# would fight over it. Older versions ignore the name.
control_socket_disable = True
