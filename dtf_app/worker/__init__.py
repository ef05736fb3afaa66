"""DTF worker package."""
