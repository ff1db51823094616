"""Adapters over the Kubernetes API: the only modules that call it. Idempotent."""
