"""Training of relational encoders: data, losses and the trainer loop (metrics: ``relsearch.retrieval_metrics``)."""
