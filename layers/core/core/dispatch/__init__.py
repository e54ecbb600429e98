"""The dispatch runtime: per-service lease and hand-off, wake-ups, control reads (the sending loop
itself is core.dispatch.dispatcher)."""
