"""`make demo`: synthetic data -> index -> service -> selective vs random joint fine-tuning, end to end."""
