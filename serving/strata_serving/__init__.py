"""The serving plane of an InferenceService: the router that picks a replica per request from live state, and the
autoscaler that sizes the replicas ahead of the forecast load (and the trace replay that judges it)."""
