"""Analyses of how a model uses its depth; each returns a tidy pandas DataFrame."""
