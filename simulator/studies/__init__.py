"""Studies built from many runs or many moments: sweeps, capacity plans, step-cost curves."""
