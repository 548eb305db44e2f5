"""Predictive autoscaling of the hot pool: forecast, policy, fleet providers, simulator
(docs/autoscaling.md)."""
