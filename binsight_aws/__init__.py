"""The AWS client of binsight (boto3 only, no SageMaker SDK): ABID download, S3 channels, ECR,
SageMaker training and tuning jobs, endpoints, batch transform. Entry point: ``binsight-aws``
(``python -m binsight_aws``).

It operates the two images from outside; neither ``service`` nor ``training`` imports it. What it
takes from them: ``training.layouts`` (the ABID file layout and label parsing), ``training.log``
(the printer), ``training.metric_names`` (to build the SageMaker metric regexes), ``service.files``
(atomic writes) and, only when a command needs them, ``training.config`` (``--hp`` is checked
before a job is paid for), ``service.artifact`` and ``service.architectures``.
"""
