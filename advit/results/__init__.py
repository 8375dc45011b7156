"""Results: tables over runs and seeds, the checkpoint bundle and its card, the paper's figures."""
