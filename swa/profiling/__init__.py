"""Device memory and time of full against sliding-window attention, alone and in a training step.

rows.py     what one measurement is: kinds, variants, the CSV columns, report order, a cell's
            text, the log-log slope fit
measure.py  one configuration in this process (`measure`); `python -m swa.profiling.measure`
            is the worker that the sweep starts, one fresh process per configuration
sweep.py    `compare_memory_usage`: a sweep of configurations, each in its own subprocess
tables.py   memory.md and memory.csv from a sweep's rows, and the rows back from memory.csv
plot.py     memory.png from a sweep's rows
report.py   the two jobs behind profile_memory.py: `profile` (sweep, then report), `rebuild`
trace.py    a jax.profiler trace, summarised per device (busy share, longest kernels)
"""
