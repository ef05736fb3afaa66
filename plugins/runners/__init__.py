"""Built-in task runners, registered through the dtf.runners entry-point group."""
