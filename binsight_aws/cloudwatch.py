"""Follow a SageMaker job's CloudWatch log streams (``/aws/sagemaker/TrainingJobs``, ...).

Each host writes its own stream (``<job>/algo-1-<epoch>``); streams appear while the job starts.
:meth:`LogFollower.poll` prints the lines that arrived since the last poll, prefixed with the
host when there is more than one.
"""

from __future__ import annotations

from typing import Any

from training.log import Log, print_line

TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TRANSFORM_LOG_GROUP = "/aws/sagemaker/TransformJobs"


class LogFollower:
    def __init__(self, logs: Any, group: str, job_name: str, log: Log = print_line, max_pages: int = 20) -> None:
        self.logs, self.group, self.job_name, self.log = logs, group, job_name, log
        self.max_pages = max_pages
        self.tokens: dict[str, str | None] = {}
        self.lines = 0

    def _streams(self) -> list[str]:
        names: list[str] = []
        kwargs: dict[str, Any] = {"logGroupName": self.group, "logStreamNamePrefix": f"{self.job_name}/"}
        while True:
            try:
                page = self.logs.describe_log_streams(**kwargs)
            except self.logs.exceptions.ResourceNotFoundException:
                return names  # the group appears with the job's first log line
            names += [s["logStreamName"] for s in page.get("logStreams", [])]
            if not page.get("nextToken"):
                return sorted(names)
            kwargs["nextToken"] = page["nextToken"]

    def poll(self) -> int:
        """Print new lines of every stream; returns how many were printed."""
        printed = 0
        streams = self._streams()
        for stream in streams:
            self.tokens.setdefault(stream, None)
        prefix_hosts = len(self.tokens) > 1
        for stream in sorted(self.tokens):
            host = stream.split("/", 1)[-1].rsplit("-", 1)[0]
            for _ in range(self.max_pages):
                kwargs: dict[str, Any] = {"logGroupName": self.group, "logStreamName": stream, "startFromHead": True}
                if self.tokens[stream]:
                    kwargs["nextToken"] = self.tokens[stream]
                try:
                    page = self.logs.get_log_events(**kwargs)
                except self.logs.exceptions.ResourceNotFoundException:
                    break
                for event in page.get("events", []):
                    for line in str(event.get("message", "")).splitlines():
                        self.log(f"[{host}] {line}" if prefix_hosts else line)
                        printed += 1
                token = page.get("nextForwardToken")
                # the same token back means: nothing newer yet
                if token is None or token == self.tokens[stream]:
                    break
                self.tokens[stream] = token
                if not page.get("events"):
                    break
        self.lines += printed
        return printed
