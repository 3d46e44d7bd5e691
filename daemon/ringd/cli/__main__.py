"""`python -m ringd.cli` (what `ringd` runs)."""

from ringd.cli.main import main

raise SystemExit(main())
