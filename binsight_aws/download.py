"""``download-abid``: choose bins, download them, print the summary."""

from __future__ import annotations

from binsight_aws.abid_download import AbidDownloader
from binsight_aws.abid_selection import read_file_list, read_ids_file, sample_bins
from binsight_aws.configs import DownloadAbidConfig
from binsight_aws.retry import Backoff
from binsight_aws.session import AwsClients
from training.log import Log, print_line

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


def make_downloader(config: DownloadAbidConfig, log: Log = print_line, backoff_base_s: float = 0.5) -> AbidDownloader:
    clients = AwsClients.for_command(config, max_pool_connections=config.workers + 4)
    # our Backoff owns the retries (it also covers short and corrupt bodies), so botocore makes one attempt
    s3 = clients.client("s3", unsigned=config.unsigned, max_attempts=1)
    return AbidDownloader(
        s3,
        config.bucket,
        config.dest,
        workers=config.workers,
        log=log,
        backoff=Backoff(retries=config.retries, base_s=backoff_base_s),
    )


def run(config: DownloadAbidConfig, log: Log = print_line, downloader: AbidDownloader | None = None) -> int:
    downloader = downloader or make_downloader(config, log)
    metadata, sizes = None, None
    if config.file_list is not None:
        ids = read_file_list(config.file_list)
    elif config.ids_file is not None:
        ids = read_ids_file(config.ids_file)
    elif config.ids is not None:
        ids = list(dict.fromkeys(config.ids))
    else:
        try:
            sample = sample_bins(
                downloader,
                config.sample,
                max_count=config.max_count,
                seed=config.seed,
                list_limit=config.list_limit,
                read_limit=config.metadata_read_limit,
                refresh_listing=config.refresh_listing,
                log=log,
            )
        except KeyboardInterrupt:
            log("sample_interrupted: nothing written yet; run the same command to start again")
            return EXIT_INTERRUPTED
        ids, metadata, sizes = sample.ids, sample.metadata, sample.sizes
        if not ids:
            log("download_summary: requested_bins: 0 (the sample found no usable bins)")
            return EXIT_FAILED
    summary = downloader.download(ids, max_count=config.max_count, metadata=metadata, metadata_sizes=sizes)
    for line in summary.lines():
        log(line)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    short = config.sample is not None and len(ids) < config.sample
    return EXIT_FAILED if summary.failures or short else EXIT_OK
