"""pyarmonik."""
