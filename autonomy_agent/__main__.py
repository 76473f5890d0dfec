"""`python -m autonomy_agent ...`: the same as `autonomy-orchestrator agent ...`."""

import sys

from autonomy_agent.cli import main

sys.exit(main())
