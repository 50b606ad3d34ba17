"""The ranking-only CTR system: Criteo preprocessing, training, serving with feedback."""
