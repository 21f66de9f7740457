"""Marks the service root for pytest, which puts this folder on sys.path so tests import the package."""
