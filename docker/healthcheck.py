"""Docker HEALTHCHECK: exit 0 when the local server answers GET /ping with 200, else 1.

Uses only the standard library, so the image needs no curl. The port follows the server's own
rule: SAGEMAKER_BIND_TO_PORT, else 8080.
"""

import os
import sys
import urllib.request

port = os.environ.get("SAGEMAKER_BIND_TO_PORT", "").strip() or "8080"
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:  # connection refused, timeout, HTTP 5xx
    print(f"healthcheck: {exc}", file=sys.stderr)
    sys.exit(1)
