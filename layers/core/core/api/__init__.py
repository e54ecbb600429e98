"""API features: one module per resource the REST API serves (the handlers in functions/api stay thin)."""
