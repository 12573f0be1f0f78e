"""Metrics as ``update / compute / reset`` objects over float64 running statistics; the maths
lives in pure functions beside them. Every number is reported with its protocol."""
