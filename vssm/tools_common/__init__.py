"""Helpers shared by the command-line tools in tools/ (training, conversion, benchmarks, ERF)."""
