"""Serving on Ray Serve: model versions as deployments, traffic policies, validated inputs, logged predictions."""
