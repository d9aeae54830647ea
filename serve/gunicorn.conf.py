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


# Metrics are summed over workers through a folder each worker writes its counts to
# (serve/metrics.py). The master creates it before forking and removes it at exit.
_metrics_dir_created: str | None = None


def on_starting(server):
    global _metrics_dir_created
    if not os.environ.get("RECS_METRICS_DIR"):
        import tempfile

        _metrics_dir_created = tempfile.mkdtemp(prefix="recs-metrics-")
        os.environ["RECS_METRICS_DIR"] = _metrics_dir_created


def on_exit(server):
    if _metrics_dir_created:
        import shutil

        shutil.rmtree(_metrics_dir_created, ignore_errors=True)


def post_worker_init(worker):
    # Everything loaded so far (modules, the app, its pools) lives as long as the worker:
    # move it out of the cyclic collector's sight, so that a full collection scans only
    # what requests allocate (about 14 ms -> well under 1 ms; a p99 matter).
    import gc

    gc.collect()
    gc.freeze()


def worker_exit(server, worker):
    # Write the exposures still queued before the worker goes (serve/exposures.py; atexit
    # does the same outside gunicorn).
    from serve import exposures

    exposures.close_all()
