"""The AWS client of binsight (boto3 only, no SageMaker SDK): ABID download, S3 channels, ECR,
SageMaker training and tuning jobs, endpoints, batch transform. Entry point: ``binsight-aws``
(``python -m binsight_aws``).

It operates the two images from outside; neither ``service`` nor ``training`` imports it. From
``training`` it takes only the ABID layout (file names, label parsing) and, when a job is made,
the hyperparameter model to check ``--hp`` values before anything is paid for.
"""
