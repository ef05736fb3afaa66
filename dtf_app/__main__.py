"""``python -m dtf_app`` is the same as the ``dtf`` console script."""

from dtf_app.cli import main

raise SystemExit(main())
