"""Ranking metrics, the baselines they are compared against, and the run report."""
