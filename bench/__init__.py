"""Benchmarks: each prints its figures against a raw baseline measured on the same endpoint in the
same run, so the ratio, not the machine, is what to compare."""
