"""Strata scheduler extender: cost-aware placement and demand forecasting for kube-scheduler."""
