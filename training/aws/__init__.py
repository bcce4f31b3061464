"""AWS operations for binsight (boto3 only, no SageMaker SDK): ABID download, S3 channels, ECR,
SageMaker training, tuning, endpoints and batch transform. Entry point: ``binsight-aws``.

The serving image never imports this package (``service`` does not import ``training``).
"""
