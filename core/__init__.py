"""Shared core: settings, database access, lake paths, the private Postgres and migrations.

Everything else in the project (models, jobs, serve, dags, cli) may import from here;
this package imports nothing from them.
"""
