"""Shared plumbing: config, Spark session, logging, atomic I/O, hashing, errors."""
