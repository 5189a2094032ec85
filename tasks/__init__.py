"""Prefect tasks: thin wrappers over the pipeline stages in :mod:`hmrmamba.stages` (see ``tasks.stages``)."""
