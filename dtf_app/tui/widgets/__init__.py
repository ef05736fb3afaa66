"""The dashboard's views (one widget per tab) and small reusable widgets."""
