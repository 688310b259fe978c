"""``python -m depman.agent`` and the zipapp entry point."""

from depman.agent.main import main

raise SystemExit(main())
