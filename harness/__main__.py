"""`python -m harness` is the `rtsoak` command."""

from harness.cli import main

raise SystemExit(main())
