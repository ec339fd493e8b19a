"""Thin Prefect flows over the hitchhiker library (one module per stage)."""
