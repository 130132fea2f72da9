"""``python -m sparsetrain``: the CLI (see ``sparsetrain.cli``)."""

from sparsetrain.cli import main

raise SystemExit(main())
