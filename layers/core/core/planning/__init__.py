"""Planning: a task's recipients become queued subtasks routed to services; the cancel sweep."""
