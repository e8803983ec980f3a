"""Model loading and the Ray actors that run evaluation cells."""
