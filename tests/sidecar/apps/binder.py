"""A gRPC app for the bindings tests, written with the official `dapr.ext.grpc.App`.

Input binding `ticks` (a cron) and `failing` are recorded in $RECORD_FILE as JSON lines; `failing`
answers an error the first $FAIL_TIMES times. Method `echo` (reached through the deprecated
InvokeService) answers the request data reversed. Port from $APP_PORT.
"""

from __future__ import annotations

import json
import os
import threading

from dapr.ext.grpc import App, BindingRequest, InvokeMethodRequest, InvokeMethodResponse

RECORD_FILE = os.environ["RECORD_FILE"]
FAIL_TIMES = int(os.environ.get("FAIL_TIMES", "0"))
app = App()
_lock = threading.Lock()
_calls = {"failing": 0}


def record(name: str, request: BindingRequest) -> None:
    line = {"binding": name, "data": request.data.decode(), "metadata": request.binding_metadata}
    with _lock, open(RECORD_FILE, "a") as out:
        out.write(json.dumps(line) + "\n")


@app.binding("ticks")
def ticks(request: BindingRequest) -> None:
    record("ticks", request)


@app.binding("failing")
def failing(request: BindingRequest) -> None:
    record("failing", request)
    with _lock:
        _calls["failing"] += 1
        fail = _calls["failing"] <= FAIL_TIMES
    if fail:
        raise RuntimeError("not yet")


@app.method("echo")
def echo(request: InvokeMethodRequest) -> InvokeMethodResponse:
    return InvokeMethodResponse(request.data[::-1], "text/plain")


if __name__ == "__main__":
    app.run(int(os.environ["APP_PORT"]))
