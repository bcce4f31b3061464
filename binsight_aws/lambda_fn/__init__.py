"""The binsight Lambda function: counts photos as they land in S3, and answers a Function URL like ``POST /predict``.

``binsight-aws deploy-lambda`` zips this package with the torch-free part of ``service`` it imports
(``service.schemas``, ``service.manual_check``, ``service.model_metadata``, ``service.options``) and pydantic;
the model itself runs behind an :mod:`~binsight_aws.lambda_fn.invokers` invoker (a SageMaker endpoint, or any
binsight server's ``/invocations``). Entry point: ``binsight_aws.lambda_fn.handler.handler``. Nothing here
imports boto3 at module level except where AWS is the point (the Lambda runtime provides boto3).
"""
