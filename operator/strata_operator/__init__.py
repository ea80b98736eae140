"""Strata operator: kopf handlers for TrainingJob, InferenceService and ResourcePool."""
