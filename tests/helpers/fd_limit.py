"""Run a command with a low descriptor limit (soft and hard): fd_limit.py N CMD ARGS...

For tests of a daemon that runs out of descriptors (tests/test_daemon_limits.py).
"""

import os
import resource
import sys

limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
os.execvp(sys.argv[2], sys.argv[2:])
