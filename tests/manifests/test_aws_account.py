"""manifests/aws/account.yaml, the account side, against cfn-lint, the operator's code and the rest
of the repository: the template lints clean; every role ARN the manifests, docs and README show is
one the operator may pass (iam:PassRole); the operator's policy allows every AWS call it makes and
nothing else; the execution role carries what SageMaker needs; and the stack's outputs are the
values manifests/settings.yaml and serviceaccount.yaml hold."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import subprocess
import sys

import botocore.session
import pytest
import yaml
from botocore import xform_name

from llama_operator.artifacts import endpoint_code, training_source
from llama_operator.plan import images
from llama_operator.paths import REPO_ROOT, manifests_dir

TEMPLATE = manifests_dir() / "aws" / "account.yaml"
ACCOUNT, REGION, PARTITION = "111122223333", "us-east-1", "aws"  # the manifests' placeholder account
DATA_BUCKET = "my-llama-bucket"  # the bucket of the examples, given to the stack as DataBucket


# -- the template, read with CloudFormation's short tags ----------------------------------------------

class _CfnLoader(yaml.SafeLoader):
    pass


def _tag(loader: yaml.Loader, suffix: str, node: yaml.Node):
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _tag)


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)


def resolver(template: dict, region: str = REGION, **parameters):
    """A function that evaluates Ref / Fn::GetAtt / Fn::Sub in a template fragment as CloudFormation
    would in ACCOUNT and `region`, with the parameters' defaults unless given."""
    params = {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()}
    params.update(parameters)
    bucket = f"llama-operator-{ACCOUNT}"
    refs = {"AWS::AccountId": ACCOUNT, "AWS::Region": region, "AWS::Partition": PARTITION, **params,
            "SourceBucket": bucket, "SourceBucket.Arn": f"arn:{PARTITION}:s3:::{bucket}",
            "EventsQueue": f"https://sqs.{region}.amazonaws.com/{ACCOUNT}/llama-operator-events",
            "EventsQueue.Arn": f"arn:{PARTITION}:sqs:{region}:{ACCOUNT}:llama-operator-events",
            "OperatorRole.Arn": f"arn:{PARTITION}:iam::{ACCOUNT}:role/llama-operator",
            "ExecutionRole.Arn": f"arn:{PARTITION}:iam::{ACCOUNT}:role/sagemaker-llama-execution"}

    def sub(text: str, local: dict) -> str:
        return re.sub(r"\$\{([^}]+)\}", lambda m: str({**refs, **local}[m.group(1)]), text)

    def resolve(node):
        if isinstance(node, dict) and len(node) == 1:
            (key, value), = node.items()
            if key == "Ref":
                return refs[value]
            if key == "Fn::GetAtt":
                return refs[".".join(value)]
            if key == "Fn::Sub":
                text, local = (value, {}) if isinstance(value, str) else (value[0], resolve(value[1]))
                return sub(text, local)
        if isinstance(node, dict):
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve


def statements(template: dict, role: str, region: str = REGION, **parameters) -> list[dict]:
    resolve = resolver(template, region, **parameters)
    props = template["Resources"][role]["Properties"]
    out = []
    for policy in props["Policies"]:
        for st in resolve(policy["PolicyDocument"])["Statement"]:
            assert st["Effect"] == "Allow"
            as_list = lambda v: v if isinstance(v, list) else [v]  # noqa: E731
            out.append({**st, "Action": as_list(st["Action"]), "Resource": as_list(st["Resource"])})
    return out


def allowed(stmts: list[dict], action: str, resource: str | None = None) -> bool:
    return any(any(fnmatch.fnmatchcase(action, a) for a in st["Action"])
               and (resource is None or any(fnmatch.fnmatchcase(resource, r) for r in st["Resource"]))
               for st in stmts)


def passrole_pattern(template: dict, account: str = ACCOUNT, partition: str = PARTITION) -> str:
    (st,) = [s for s in statements(template, "OperatorRole") if "iam:PassRole" in s["Action"]]
    (pattern,) = st["Resource"]
    assert st["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    return pattern.replace(f"::{ACCOUNT}:", f"::{account}:").replace(f"arn:{PARTITION}:", f"arn:{partition}:", 1)


# -- cfn-lint ------------------------------------------------------------------------------------------

def test_cfn_lint_finds_nothing():
    """No error and no warning, in a few regions (cfn-lint's exit code: 2 errors, 4 warnings)."""
    out = subprocess.run([sys.executable, "-c", "from cfnlint.runner import main; raise SystemExit(main())",
                          "--regions", "us-east-1", "eu-west-1", "ap-northeast-1", "--", str(TEMPLATE)],
                         capture_output=True, text=True, check=False)
    assert out.returncode & (2 | 4) == 0 and "Traceback" not in out.stderr, out.stdout + out.stderr


# -- role naming ---------------------------------------------------------------------------------------

ROLE_ARN = re.compile(r"arn:(aws[a-z-]*):iam::([0-9]{12}|\*):role/([A-Za-z0-9+=,.@_/*-]+)")


def shown_role_arns() -> dict[str, list[str]]:
    """Every IAM role ARN written in manifests/ (examples included), docs/ and the README."""
    files = sorted(p for p in manifests_dir().rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml"))
    files += sorted((REPO_ROOT / "docs").glob("*.md")) + [REPO_ROOT / "README.md"]
    found: dict[str, list[str]] = {}
    for path in files:
        for m in ROLE_ARN.finditer(path.read_text()):
            found.setdefault(m.group(0), []).append(str(path.relative_to(REPO_ROOT)))
    return found


def test_every_role_arn_shown_is_one_the_operator_may_pass(template):
    operator_role = template["Resources"]["OperatorRole"]["Properties"]["RoleName"]
    shown = shown_role_arns()
    assert any("examples/" in f for fs in shown.values() for f in fs), "the examples' roleArn should be seen"
    refused = {}
    for arn, where in shown.items():
        partition, account, name = ROLE_ARN.fullmatch(arn).groups()
        if name == operator_role:
            continue  # the operator's own IRSA role (serviceaccount.yaml), never passed
        # IAM's wildcards: * any run of characters, ? one; an allowlist's own * stays literal here
        if not fnmatch.fnmatchcase(arn, passrole_pattern(template, account, partition)):
            refused[arn] = where
    assert not refused, (f"role ARNs that iam:PassRole on {passrole_pattern(template)} refuses "
                         f"(AccessDenied on the first apply): {refused}")


def test_the_roles_of_the_stack_are_on_the_right_side_of_the_pattern(template):
    res = template["Resources"]
    pattern = passrole_pattern(template)
    execution = f"arn:{PARTITION}:iam::{ACCOUNT}:role/{res['ExecutionRole']['Properties']['RoleName']}"
    operator = f"arn:{PARTITION}:iam::{ACCOUNT}:role/{res['OperatorRole']['Properties']['RoleName']}"
    assert fnmatch.fnmatchcase(execution, pattern), "the stack's execution role must be passable"
    assert not fnmatch.fnmatchcase(operator, pattern), "the operator must not be able to pass its own role"
    assert not fnmatch.fnmatchcase(f"arn:{PARTITION}:iam::{ACCOUNT}:role/admin", pattern)
    assert not fnmatch.fnmatchcase(f"arn:{PARTITION}:iam::444455556666:role/sagemaker-llama-execution", pattern), \
        "only this account's roles"


def test_the_examples_use_the_stacks_execution_role(template):
    name = template["Resources"]["ExecutionRole"]["Properties"]["RoleName"]
    for path in sorted((manifests_dir() / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "roleArn" in doc.get("spec", {}):
                assert doc["spec"]["roleArn"].endswith(f":role/{name}"), path.name


# -- the operator's policy: every call it makes, nothing more ----------------------------------------

# What `llama-operator run` does not run: the embedded default, the demo and the tiny model builder,
# all under local/ (they talk to the local services only).
NOT_IN_CLUSTER = ("local/",)
SERVICES = ("sagemaker", "s3", "sqs", "cloudwatch", "application-autoscaling")  # the clients the operator makes
# IAM actions named otherwise than their API operation (SQS's batch calls are authorized by the
# single call's action: there is no sqs:DeleteMessageBatch in IAM)
ACTION_OF = {"s3:HeadObject": "s3:GetObject", "s3:ListObjectsV2": "s3:ListBucket", "s3:CopyObject": "s3:PutObject",
             "sqs:DeleteMessageBatch": "sqs:DeleteMessage"}
# What IAM checks besides the operation itself: creating with Tags needs sagemaker:AddTags, and
# handing spec.roleArn to SageMaker needs iam:PassRole.
IMPLIED = {"sagemaker:CreateTrainingJob": {"sagemaker:AddTags", "iam:PassRole"},
           "sagemaker:CreateModel": {"sagemaker:AddTags", "iam:PassRole"},
           "sagemaker:CreateEndpointConfig": {"sagemaker:AddTags", "iam:PassRole"},  # ExecutionRoleArn (components)
           "sagemaker:CreateEndpoint": {"sagemaker:AddTags"},
           "sagemaker:CreateInferenceComponent": {"sagemaker:AddTags"},
           "s3:CopyObject": {"s3:GetObject"},  # reads the source as well
           # Application Auto Scaling makes and deletes the target-tracking alarms as the caller, and
           # creates its service-linked role on the first registration.
           "application-autoscaling:RegisterScalableTarget": {"iam:CreateServiceLinkedRole"},
           "application-autoscaling:PutScalingPolicy": {"cloudwatch:PutMetricAlarm", "cloudwatch:DescribeAlarms"},
           "application-autoscaling:DeleteScalingPolicy": {"cloudwatch:DeleteAlarms", "cloudwatch:DescribeAlarms"},
           "application-autoscaling:DeregisterScalableTarget": {"cloudwatch:DeleteAlarms"}}


def operator_actions() -> dict[str, set[str]]:
    """IAM action -> the operator's modules that call an API operation needing it. An operation
    counts when its boto3 method name (create_training_job, put_object, ...) appears in the code."""
    session = botocore.session.get_session()
    methods: dict[str, set[str]] = {}
    for service in SERVICES:
        model = session.get_service_model(service)
        for op in model.operation_names:
            methods.setdefault(xform_name(op), set()).add(f"{service}:{op}")
    package = REPO_ROOT / "operator" / "llama_operator"
    needed: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.startswith(NOT_IN_CLUSTER):
            continue
        for word in set(re.findall(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b", path.read_text())):
            for op in methods.get(word, ()):
                action = ACTION_OF.get(op, op)
                for a in {action} | IMPLIED.get(action, set()) | IMPLIED.get(op, set()):
                    needed.setdefault(a, set()).add(rel)
    return needed


def test_the_operator_policy_allows_every_call_and_no_other(template):
    stmts = statements(template, "OperatorRole")
    needed = operator_actions()
    assert {"sagemaker:CreateTrainingJob", "sagemaker:CreateEndpoint", "s3:PutObject",
            "sqs:ReceiveMessage"} <= set(needed), "the scan should see the operator's calls"
    missing = {a: sorted(m) for a, m in needed.items() if not allowed(stmts, a)}
    assert not missing, f"calls the operator makes that its IAM policy does not allow: {missing}"
    granted = {a for st in stmts for a in st["Action"]}
    unused = sorted(a for a in granted if not any(fnmatch.fnmatchcase(n, a) for n in needed))
    assert not unused, f"grants no call of the operator needs (not least privilege): {unused}"


def test_the_operator_writes_only_under_its_source_bucket(template):
    stmts = statements(template, "OperatorRole")
    bucket = f"llama-operator-{ACCOUNT}"
    assert allowed(stmts, "s3:PutObject", f"arn:aws:s3:::{bucket}/source/x.tar.gz")
    assert not allowed(stmts, "s3:PutObject", f"arn:aws:s3:::{DATA_BUCKET}/finetunes/source/x.tar.gz"), \
        "an output prefix is the user's; the operator writes only to LLAMA_OPERATOR_SOURCE_S3_URI"


# -- the execution role ------------------------------------------------------------------------------

EXECUTION_NEEDS = [
    "s3:GetObject", "s3:PutObject", "s3:ListBucket",
    "ecr:GetAuthorizationToken", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
    "ecr:BatchCheckLayerAvailability",
    "logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
    "cloudwatch:PutMetricData", "cloudwatch:DescribeAlarms",
]


def test_the_execution_role_has_what_sagemaker_needs(template):
    role = template["Resources"]["ExecutionRole"]
    assert role["Condition"] == "CreateExecutionRole"
    trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust == [{"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
                      "Action": "sts:AssumeRole"}]
    stmts = statements(template, "ExecutionRole", DataBucket=DATA_BUCKET)
    missing = [a for a in EXECUTION_NEEDS if not allowed(stmts, a)]
    assert not missing, missing
    digest = hashlib.sha256(b"x").hexdigest()
    source = training_source.source_uri(f"s3://llama-operator-{ACCOUNT}/", digest)
    code = endpoint_code.code_prefix(f"s3://llama-operator-{ACCOUNT}/", {"serving.properties": "x"})
    s3_arn = lambda uri: "arn:aws:s3:::" + uri[len("s3://"):]  # noqa: E731
    assert allowed(stmts, "s3:GetObject", s3_arn(source)), "the job reads its source"
    assert allowed(stmts, "s3:GetObject", s3_arn(code) + "serving.properties"), "the endpoint reads its code"
    assert not allowed(stmts, "s3:PutObject", s3_arn(source)), "nor may it change what it runs"
    assert allowed(stmts, "s3:GetObject", f"arn:aws:s3:::{DATA_BUCKET}/models/llama-3.2-1b/config.json")
    assert allowed(stmts, "s3:PutObject", f"arn:aws:s3:::{DATA_BUCKET}/finetunes/job/model/model.safetensors")
    assert allowed(stmts, "logs:PutLogEvents",
                   f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/TrainingJobs:log-stream:job/algo-1")


def test_the_execution_role_pulls_every_image_the_operator_picks(template):
    table = json.loads((images.TABLE).read_text())["images"]
    refused = []
    for kind, by_region in table.items():
        for region, uri in by_region.items():
            m = re.fullmatch(r"([0-9]{12})\.dkr\.ecr\.([a-z0-9-]+)\.[a-z0-9.-]+/([^:@/]+)[:@].*", uri)
            assert m and m.group(2) == region, uri
            stmts = statements(template, "ExecutionRole", region, DataBucket=DATA_BUCKET)  # a stack there
            arn = f"arn:aws:ecr:{region}:{m.group(1)}:repository/{m.group(3)}"
            if not allowed(stmts, "ecr:BatchGetImage", arn):
                refused.append((kind, region, arn))
    assert not refused, f"images of images.json the execution role may not pull: {refused}"


def test_the_readme_writes_the_execution_roles_needs_down(template):
    readme = (REPO_ROOT / "README.md").read_text()
    assert "### SageMaker execution role" in readme
    section = readme.split("### SageMaker execution role", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    missing = [a for a in EXECUTION_NEEDS if f"`{a}`" not in section]
    assert not missing, f"README's SageMaker execution role section leaves out {missing}"
    assert template["Parameters"]["SageMakerRolePattern"]["Default"] in section


# -- the outputs are the values the manifests hold -----------------------------------------------------

def _settings() -> dict:
    (cm,) = [d for d in yaml.safe_load_all((manifests_dir() / "settings.yaml").read_text()) if d]
    return cm["data"]


def test_the_source_output_gives_one_source_folder(template):
    output = resolver(template)(template["Outputs"]["SourceS3Uri"]["Value"])
    assert output == f"s3://llama-operator-{ACCOUNT}/"
    assert _settings()["LLAMA_OPERATOR_SOURCE_S3_URI"] == output
    digest = hashlib.sha256(b"workloads").hexdigest()
    assert training_source.source_uri(output, digest) == f"s3://llama-operator-{ACCOUNT}/source/{digest}.tar.gz"


def test_the_other_outputs_are_what_the_manifests_hold(template):
    resolve = resolver(template)
    outputs = {k: resolve(v["Value"]) for k, v in template["Outputs"].items()}
    assert _settings()["LLAMA_OPERATOR_EVENTS_QUEUE_URL"] == outputs["EventsQueueUrl"]
    sa = yaml.safe_load((manifests_dir() / "serviceaccount.yaml").read_text())
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == outputs["OperatorRoleArn"]
    allowlist = yaml.safe_load(_settings()["role-allowlist.yaml"])
    assert outputs["ExecutionRoleArn"] in [arn for arns in allowlist.values() for arn in arns]
