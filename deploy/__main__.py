"""`python -m deploy`, the same as the `maskrcnn-sagemaker` console script."""

from .cli import main

raise SystemExit(main())
