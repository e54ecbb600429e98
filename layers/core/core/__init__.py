"""Domain core of the EDM queue scheduler, shipped as the `CoreLayer` Lambda layer."""
