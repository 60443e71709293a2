"""Self-contained examples that build a real model and data offline (make demo)."""
