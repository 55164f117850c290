"""Plot functions: each takes an analysis table (a pandas DataFrame) and returns a Figure."""
