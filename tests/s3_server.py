"""A local S3-compatible server for the tests and benchmarks: moto's S3 service behind werkzeug on 127.0.0.1, in its
own process, counting every request it serves.

``python tests/s3_server.py [--latency SECONDS]`` prints ``port <n>`` once it listens. Besides S3 it answers
``GET /_requests``: the requests served since the last ``DELETE /_requests`` (``[method, path, range header]``
each) and the most that were in progress at once, as JSON; ``PUT /_latency?seconds=S`` delays every S3 request
from then on by S, as a remote object store's latency would (also ``--latency``). ``S3Server`` starts one from
Python and stops it.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import threading
import time
import urllib.request

KEY, SECRET = "testing", "testing"


def _app(latency: float):
    from moto.moto_server.werkzeug_app import create_backend_app
    from werkzeug.wrappers import Request

    s3 = create_backend_app("s3")
    state = {"log": [], "inflight": 0, "most": 0, "latency": latency}
    lock = threading.Lock()

    def control(environ, start_response, path):
        request = Request(environ)
        with lock:
            if path == "/_latency":
                state["latency"] = float(request.args["seconds"])
            body = json.dumps({"requests": state["log"], "most_in_progress": state["most"]}).encode()
            if request.method == "DELETE":
                state["log"], state["most"] = [], 0
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path in ("/_requests", "/_latency"):
            return control(environ, start_response, path)
        with lock:
            state["log"].append([environ["REQUEST_METHOD"], path, environ.get("HTTP_RANGE", "")])
            state["inflight"] += 1
            state["most"] = max(state["most"], state["inflight"])
            delay = state["latency"]
        try:
            if delay:
                time.sleep(delay)
            return s3(environ, start_response)
        finally:
            with lock:
                state["inflight"] -= 1

    return app


def main() -> None:
    from werkzeug.serving import make_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every S3 request")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = make_server("127.0.0.1", 0, _app(args.latency), threaded=True)
    print(f"port {server.server_port}", flush=True)
    server.serve_forever()


class S3Server:
    """The server in a child process: ``endpoint``, ``storage_options`` for fsspec/s3fs, ``requests()`` and
    ``reset()``, ``bucket(name)`` to create one; ``stop()`` ends it."""

    def __init__(self, latency: float = 0.0):
        self.process = subprocess.Popen([sys.executable, __file__, "--latency", str(latency)], stdout=subprocess.PIPE,
                                        text=True)
        line = self.process.stdout.readline()
        if not line.startswith("port "):
            self.process.kill()
            raise RuntimeError(f"the S3 server did not start (it said {line!r})")
        self.endpoint = f"http://127.0.0.1:{int(line.split()[1])}"
        self.storage_options = {"endpoint_url": self.endpoint, "key": KEY, "secret": SECRET,
                                "client_kwargs": {"region_name": "us-east-1"}}

    def _call(self, method: str, path: str):
        request = urllib.request.Request(self.endpoint + path, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def requests(self) -> list[tuple[str, str, str]]:
        """(method, path, range) of each S3 request since the last reset."""
        return [tuple(r) for r in json.loads(self._call("GET", "/_requests"))["requests"]]

    def most_in_progress(self) -> int:
        """The most S3 requests the server was serving at once since the last reset."""
        return json.loads(self._call("GET", "/_requests"))["most_in_progress"]

    def reset(self) -> None:
        self._call("DELETE", "/_requests")

    def set_latency(self, seconds: float) -> None:
        self._call("PUT", f"/_latency?seconds={seconds}")

    def bucket(self, name: str) -> str:
        self._call("PUT", f"/{name}")
        return f"s3://{name}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


if __name__ == "__main__":
    main()
