"""Built-in DTF plugins: hardware probes and task runners (installed as package dtf_plugins)."""
