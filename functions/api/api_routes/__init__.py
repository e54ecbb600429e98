"""One router per resource; each route parses, calls one core function, shapes the reply."""
