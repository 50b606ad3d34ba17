"""Monitoring: rolling AUC and feature drift, turned into typed retraining decisions."""
