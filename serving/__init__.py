"""Serving: the BentoML model store (registered versions) and, later, the HTTP service."""
