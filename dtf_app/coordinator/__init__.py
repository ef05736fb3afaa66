"""DTF coordinator package."""
