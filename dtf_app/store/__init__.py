"""DTF store package."""
