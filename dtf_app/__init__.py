"""DTF: a distributed testing framework.

One program, ``dtf``: coordinator, worker, peer, CLI. Everything heavy is imported lazily by the command
that needs it, so ``import dtf_app`` (and ``dtf --version``) stays instant.
"""

__version__ = "0.1.0"
