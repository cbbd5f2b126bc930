"""Dagster: the single Definitions, assets, checks, resources, jobs, source adapters."""
