"""The bottom layer: process set-up, torchrun ranks, host memory and atomic files.

Knows nothing of tasks, runs, sweeps or reports.
"""
