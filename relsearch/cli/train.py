"""CLI commands: train."""
from relsearch.cli.app import app, bench_app, print_json, user_errors  # noqa: F401
