"""Audience: bulk contact imports."""
