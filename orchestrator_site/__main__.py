import sys

from orchestrator_site.cli import main

sys.exit(main())
