"""Runs: the run folder, the one run writer, single and vectorised execution, one pool."""
