"""Prefect flows: evaluate a matrix of cells, run the nightly regression, build reports."""
