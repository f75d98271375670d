"""Calibration: PyTorch microbenchmarks, the fit of efficiencies, validation. The only torch user."""
