"""Code that runs in the Prefect venv (`make prefect-venv`), not in the worker's."""
