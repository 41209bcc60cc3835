"""``python -m vmshift.kubectl``: the plugin, for launchers that cannot rely on the console script."""

import sys

from vmshift.kubectl.main import main

sys.exit(main())
