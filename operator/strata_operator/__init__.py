"""Strata operator: kopf handlers for TrainingJob and ResourcePool."""
