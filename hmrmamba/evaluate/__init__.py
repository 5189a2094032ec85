"""The evaluation protocol and its metrics."""
