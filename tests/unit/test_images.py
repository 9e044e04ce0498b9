import json

import pytest

from llama_operator import images
from llama_operator.images import lmi_image_uri, training_image_uri


@pytest.mark.parametrize("region", ["us-east-1", "eu-central-1", "ap-southeast-2"])
def test_default_images_resolve_offline_per_region(region):
    pytorch = training_image_uri(region, "deepspeed")
    smp = training_image_uri(region, "smp")
    lmi = lmi_image_uri(region)
    for uri in (pytorch, smp, lmi):
        assert f".dkr.ecr.{region}.amazonaws.com/" in uri
    assert "/pytorch-training:2.8.0-gpu-" in pytorch
    assert "/smdistributed-modelparallel:2.8.0-gpu-" in smp
    assert "/djl-inference:0.33.0-lmi" in lmi


def test_unknown_inputs_get_a_clear_error():
    with pytest.raises(ValueError, match="set spec.image"):
        training_image_uri("xx-nowhere-1", "deepspeed")
    with pytest.raises(ValueError, match="expected deepspeed or smp"):
        training_image_uri("us-east-1", "fsdp")
    # SMP images are published in fewer regions than the PyTorch DLC
    assert training_image_uri("me-south-1", "deepspeed")
    with pytest.raises(ValueError, match="no SMP v2 training image for region 'me-south-1'.*set spec.image"):
        training_image_uri("me-south-1", "smp")


def test_the_bundled_table_is_what_sagemaker_core_resolves_for_the_pinned_versions():
    pytest.importorskip("sagemaker.core", reason="sagemaker-core is a test dependency")
    bundled = json.loads(images.TABLE.read_text())
    assert bundled["versions"] == {"pytorch_training": images.PYTORCH_TRAINING_VERSION,
                                   "smp_training": images.SMP_TRAINING_VERSION, "lmi": images.LMI_VERSION}
    assert bundled["images"] == images.resolve_with_sagemaker_core(), \
        "the image table is stale: run python -m llama_operator.images --write"
