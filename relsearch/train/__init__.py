"""Training of relational encoders: data, losses, trainer loop and retrieval metrics."""
