"""Training: the loop (engine.py) and what it plugs in: resume state, optimiser and schedule, losses, EMA,
precise BatchNorm statistics, the time left, the run dir, the sweep summary and the loggers."""
