"""Adapters over boto3: the only modules that call AWS. Every function is idempotent."""
