"""swa.analysis: the one results pipeline for passkey evaluations. Imports no JAX.

  rows.py     PasskeyRow (the typed row; passkey.csv's columns), reading files back, seeds in names
  stats.py    span weights, Wilson intervals, pooling seeds, the 50 % crossing
  summary.py  summarize: each model's headline numbers over its seeds (one seed is n = 1)
  tables.py   the headline table, its notes, the per-distance CSV
  figures.py  heatmap, recall per seed, effective receptive field, training curves, depth sweep
  report.py   write_report / merge: the folder every passkey report is (eval_passkey.py, sweep.py)

Running evaluations (checkpoints, JAX) is the core's job: swa/evaluate.py, swa/erf.py and
swa/evaluate_workdirs.py, which hands its rows to report.write_report.
"""
