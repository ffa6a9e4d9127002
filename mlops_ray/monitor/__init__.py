"""Monitoring: reference profiles, drift, retrain policy."""
