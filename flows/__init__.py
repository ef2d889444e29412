"""Prefect flows that run and advance campaigns."""
