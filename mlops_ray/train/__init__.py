"""Training stage: one model (xgb), tuning (tune) and evaluation plus the gate (evaluate)."""
