"""Built-in hardware probes, registered through the dtf.hardware entry-point group."""
