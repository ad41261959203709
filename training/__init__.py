"""The pieces of the training script (ddpm_conditional.py, which keeps launch(), the entry point
and the loop): config (launch() < preset < --config < flags), data (the presets' CSVs and
statistics), distributed (this process's rank and device), parts (the levers built from a
config, one optimiser step, the learning-rate plan, the EMA) and evaluation (validation and the
final scores)."""
