"""Storage: the DynamoDB models, identifiers and batched writes every flow shares."""
