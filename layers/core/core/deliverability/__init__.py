"""Deliverability: what SES reports after a send (events), and the reputation guard built on it."""
