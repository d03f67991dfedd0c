"""The compose stack's webhook receiver: logs every notification Alertmanager sends.

So that an alert of the demo ends somewhere you can see (`docker compose logs
alert-log`), one line per alert: the receiver's path, firing or resolved, the alert's
name and labels. Standard library only: it runs in the exporter's own image. Not for
production: point Alertmanager at your pager, chat or ticket system instead.

    python3 alert-log.py [PORT]      # default 5001; 0 picks a free one (printed)
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: An Alertmanager notification is a few kilobytes; more is not one.
MAX_BODY = 1024 * 1024


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
        try:
            alerts = json.loads(self.rfile.read(length)).get("alerts", [])
        except (ValueError, AttributeError):
            alerts = []
            print(f"{self.path} not an Alertmanager notification", flush=True)
        for alert in alerts:
            labels = alert.get("labels", {})
            print(
                f"{self.path} {alert.get('status', '?')} {labels.get('alertname', '?')} "
                f"{json.dumps(labels, sort_keys=True)}",
                flush=True,
            )
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per alert is the log


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5001
    server = ThreadingHTTPServer(("", port), Receiver)
    print(f"alert-log listening on port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
