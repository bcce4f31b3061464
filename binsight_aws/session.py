"""boto3 clients for one command: region, profile, endpoint URL (tests, S3-compatible stores), retries."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.config
from botocore import UNSIGNED

from binsight_aws.validate import InputError


@dataclass
class AwsClients:
    """Makes (and caches) clients that share one session and settings."""

    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    max_pool_connections: int = 10
    #: botocore's own retries (standard mode: throttling, 5xx, connection errors).
    max_attempts: int = 5
    _session: Any = field(default=None, init=False, repr=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def for_command(cls, config: Any, **settings: Any) -> AwsClients:
        """Clients with a command's ``--region``, ``--profile`` and ``--endpoint-url`` (see ``CommandConfig``)."""
        return cls(region=config.region, profile=config.profile, endpoint_url=config.endpoint_url, **settings)

    @property
    def session(self) -> boto3.Session:
        if self._session is None:
            self._session = boto3.Session(profile_name=self.profile, region_name=self.region)
        return self._session

    def resolved_region(self) -> str:
        region = self.region or self.session.region_name or os.environ.get("AWS_REGION")
        if not region:
            raise InputError(
                "no AWS region: pass --region or set AWS_REGION / AWS_DEFAULT_REGION (or a region in your AWS profile)"
            )
        return region

    def client(
        self, service: str, *, unsigned: bool = False, max_attempts: int | None = None, read_timeout: float = 60.0
    ) -> Any:
        key = (service, unsigned, max_attempts, read_timeout)
        if key not in self._cache:
            config = botocore.config.Config(
                region_name=self.resolved_region(),
                retries={"mode": "standard", "total_max_attempts": max_attempts or self.max_attempts},
                max_pool_connections=self.max_pool_connections,
                connect_timeout=10,
                read_timeout=read_timeout,
                signature_version=UNSIGNED if unsigned else None,
                user_agent_extra="binsight-aws",
            )
            self._cache[key] = self.session.client(service, endpoint_url=self.endpoint_url, config=config)
        return self._cache[key]
