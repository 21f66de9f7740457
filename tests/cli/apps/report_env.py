"""Test app for `chassis run`: prints what the launcher gave it as one JSON line, exits with argv[1]."""

import json
import os
import sys

NAMES = ["DAPR_GRPC_PORT", "DAPR_HTTP_PORT", "APP_ID", "APP_PORT", "APP_PROTOCOL", "PYTHONPATH", "GREETING"]
print("env " + json.dumps({"cwd": os.getcwd(), **{name: os.environ.get(name) for name in NAMES}}), flush=True)
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
