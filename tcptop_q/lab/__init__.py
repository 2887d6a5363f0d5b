"""Reproducible kernel scenarios in private network namespaces (loopback only)."""
