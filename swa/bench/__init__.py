"""The attention benchmark behind bench_attention.py: every implementation checked, then timed.

check.py    the float32 reference (dense, or the exact slice of the last query rows), the error
            of a row against it, the tolerances, the band's query-key pair count
flex.py     torch FlexAttention on the same card, the peer row
measure.py  one (n, w): its inputs, reference, and every row checked and timed (`measure_config`);
            `Settings`, the benchmark's options as plain values; the card's matmul and copy rates
report.py   the markdown tables, the summary and the .json (`write_report`); the whole run (`run`)

  from swa.bench import measure, report
  rows = report.run(measure.Settings(lengths=[256], windows=[16], ...), command)
"""
