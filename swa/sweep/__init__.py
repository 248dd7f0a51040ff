"""swa.sweep: train a grid of configs x seeds, several runs at once, and report them.

grid.py     the grid: --grid and --seeds texts -> named Runs
workers.py  subprocesses spread over the GPUs of one machine
runner.py   run folders, resuming, the passkey evaluation of each run, sweep.py's main
"""
