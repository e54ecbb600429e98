"""Runs the whole system on one machine against an embedded AWS (a moto server). Not deployed."""
