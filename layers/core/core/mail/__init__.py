"""Mail: rendering in the sandboxed worker, the MIME message, header rules, unsubscribe links."""
