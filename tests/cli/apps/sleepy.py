"""Test app that never exits on its own and leaves a grandchild behind: nothing may outlive the launcher."""

import os
import subprocess
import sys
import time

grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(f"pids {os.getpid()} {grandchild.pid}", flush=True)
time.sleep(600)
