"""Samplers (DESIGN §3)."""
