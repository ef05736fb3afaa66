"""``dtf pytest``: a pytest suite distributed over the cluster's workers (client, bundles, worker sessions)."""
