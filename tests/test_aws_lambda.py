"""``deploy-lambda`` / ``delete-lambda`` against moto's server: the function, its S3 trigger, Function URL, bounded
retries and least-privilege role created, described back and deleted; the zip runs its handler import with
nothing but the standard library and itself (no torch)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from binsight_aws.cli import main
from binsight_aws.lambda_deploy import role_name

from aws_support import ROLE_ARN, SERVE_IMAGE, client, fake_aws_env, moto_endpoint, reset_moto  # noqa: F401
from serving_support import make_artifact

BUCKET = "bs-lambda"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("lambda-model") / "model")


@pytest.fixture
def aws(moto_endpoint: str, model_dir: Path) -> str:  # noqa: F811
    reset_moto(moto_endpoint)
    client("s3", moto_endpoint).create_bucket(Bucket=BUCKET)
    rc = main(
        [
            "deploy",
            "--serverless",
            "--endpoint-name",
            "bs-sls",
            "--image-uri",
            SERVE_IMAGE,
            "--role-arn",
            ROLE_ARN,
            "--model-dir",
            str(model_dir),
            "--upload-uri",
            f"s3://{BUCKET}/models/",
            "--poll-s",
            "0.01",
            "--env",
            "BINSIGHT_MANUAL_CHECK_CONFIDENCE=0.3",
            "--endpoint-url",
            moto_endpoint,
        ],
        log=lambda _: None,
    )
    assert rc == 0
    return moto_endpoint


def cli(endpoint: str, *argv: str) -> tuple[int, list[str]]:
    lines: list[str] = []
    return main([*argv, "--endpoint-url", endpoint], log=lines.append), lines


def test_deploy_describe_update_delete(aws: str, model_dir: Path, tmp_path: Path) -> None:
    zip_path = tmp_path / "function.zip"
    rc, lines = cli(
        aws, "deploy-lambda", "--endpoint-name", "bs-sls", "--bucket", BUCKET, "--zip-output", str(zip_path)
    )
    assert rc == 0, lines
    lam, iam, s3 = client("lambda", aws), client("iam", aws), client("s3", aws)

    function = lam.get_function_configuration(FunctionName="binsight-count")
    assert (function["Runtime"], function["Handler"]) == ("python3.11", "binsight_aws.lambda_fn.handler.handler")
    env = function["Environment"]["Variables"]
    assert env["BINSIGHT_LAMBDA_ENDPOINT_NAME"] == "bs-sls" and env["BINSIGHT_LAMBDA_MAX_PAYLOAD_MB"] == "4"
    assert (env["BINSIGHT_LAMBDA_INPUT_PREFIX"], env["BINSIGHT_LAMBDA_RESULTS_PREFIX"]) == ("incoming/", "results/")
    assert env["BINSIGHT_LAMBDA_MANUAL_CHECK_CONFIDENCE"] == "0.3"  # the endpoint's own threshold
    assert "BINSIGHT_LAMBDA_MANUAL_CHECK_EXPECTED_PROBABILITY" not in env  # the model's recommendation then
    assert lam.get_function_url_config(FunctionName="binsight-count")["AuthType"] == "AWS_IAM"
    retries = lam.get_function_event_invoke_config(FunctionName="binsight-count")
    assert (retries["MaximumRetryAttempts"], retries["MaximumEventAgeInSeconds"]) == (2, 3600)
    statements = json.loads(lam.get_policy(FunctionName="binsight-count")["Policy"])["Statement"]
    assert [s["Principal"] for s in statements] == [{"Service": "s3.amazonaws.com"}]  # no public invoke
    (notification,) = s3.get_bucket_notification_configuration(Bucket=BUCKET)["LambdaFunctionConfigurations"]
    assert notification["LambdaFunctionArn"] == function["FunctionArn"]
    rules = notification["Filter"]["Key"]["FilterRules"]
    assert [(r["Name"].lower(), r["Value"]) for r in rules] == [("prefix", "incoming/")]  # AWS answers "Prefix"

    # the role: assumable by Lambda only, one policy, every resource named (no wildcard resource)
    role = iam.get_role(RoleName=role_name("binsight-count"))["Role"]
    assert function["Role"] == role["Arn"]
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"] == ["binsight-lambda"]
    policy = iam.get_role_policy(RoleName=role["RoleName"], PolicyName="binsight-lambda")["PolicyDocument"]
    policy = json.loads(policy) if isinstance(policy, str) else policy
    grants = {s["Sid"]: (s["Action"], s["Resource"]) for s in policy["Statement"]}
    endpoint_arn = client("sagemaker", aws).describe_endpoint(EndpointName="bs-sls")["EndpointArn"]
    assert grants["InvokeEndpoint"] == ("sagemaker:InvokeEndpoint", endpoint_arn)
    assert grants["ReadPhotos"] == ("s3:GetObject", f"arn:aws:s3:::{BUCKET}/incoming/*")
    assert grants["ReadWriteResults"] == (["s3:GetObject", "s3:PutObject"], f"arn:aws:s3:::{BUCKET}/results/*")
    listing = next(s for s in policy["Statement"] if s["Sid"] == "ListResults")
    assert listing["Condition"] == {"StringLike": {"s3:prefix": "results/*"}}
    assert all("*" != s["Resource"] for s in policy["Statement"])
    assert {
        a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    } == {
        "sagemaker:InvokeEndpoint",
        "s3:GetObject",
        "s3:PutObject",
        "s3:ListBucket",
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }

    # the zip: no torch, the served model.json, and an import that needs only the standard library and the zip
    archive = zipfile.ZipFile(io.BytesIO(zip_path.read_bytes()))
    names = archive.namelist()
    assert not any(n.split("/")[0] in ("torch", "torchvision", "PIL", "fastapi", "boto3") for n in names)
    assert json.loads(archive.read("binsight_model.json")) == json.loads((model_dir / "model.json").read_text())
    unpacked = tmp_path / "unpacked"
    archive.extractall(unpacked)
    code = (
        f"import sys; sys.path.insert(0, {str(unpacked)!r}); sys.modules['torch'] = None\n"
        "import binsight_aws.lambda_fn.handler, pydantic\n"
        f"assert pydantic.__file__.startswith({str(unpacked)!r}), pydantic.__file__\n"
    )
    subprocess.run([sys.executable, "-S", "-I", "-c", code], check=True, cwd=tmp_path)

    # again, with an anonymous URL: updated in place, and the warning said
    rc, lines = cli(aws, "deploy-lambda", "--endpoint-name", "bs-sls", "--bucket", BUCKET, "--url-auth", "NONE")
    assert rc == 0, lines
    assert any(x.startswith("function: ") and "action: updated" in x for x in lines)
    assert any(x.startswith("warning: the Function URL takes requests from anyone") for x in lines)
    assert lam.get_function_url_config(FunctionName="binsight-count")["AuthType"] == "NONE"
    assert len(s3.get_bucket_notification_configuration(Bucket=BUCKET)["LambdaFunctionConfigurations"]) == 1

    rc, lines = cli(aws, "delete-lambda")
    assert rc == 0, lines
    assert lam.list_functions()["Functions"] == []
    assert "LambdaFunctionConfigurations" not in s3.get_bucket_notification_configuration(Bucket=BUCKET)
    assert role["RoleName"] not in [r["RoleName"] for r in iam.list_roles()["Roles"]]
    rc, _ = cli(aws, "delete-lambda")
    assert rc == 2  # no such function: a clear message, no traceback


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--endpoint-name", "a", "--invocations-url", "http://h:8080"], "exactly one of --endpoint-name"),
        (["--invocations-url", "ftp://h"], "must be http(s)://"),
        (["--endpoint-name", "a", "--results-prefix", "incoming/out/"], "must not contain one another"),
        (["--endpoint-name", "a", "--input-prefix", "/in/"], "must be a folder"),
        (["--endpoint-name", "a", "--function-name", "bad name"], "not a Lambda function name"),
        (["--endpoint-name", "a", "--max-retry-attempts", "3"], "max_retry_attempts"),
        (["--endpoint-name", "a", "--no-trigger", "--no-function-url"], "nothing would call the function"),
    ],
)
def test_bad_lambda_values_are_refused_before_any_aws_call(extra, message, capsys) -> None:
    rc = main(["deploy-lambda", "--bucket", BUCKET, *extra, "--endpoint-url", "http://127.0.0.1:9"], log=print)
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err or message.replace("_", "-") in err, err
