"""Prefect flows and the `geodesic` command line."""
