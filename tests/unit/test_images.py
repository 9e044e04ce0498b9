import pytest

from llama_operator.images import lmi_image_uri, training_image_uri


@pytest.mark.parametrize("region", ["us-east-1", "eu-central-1", "ap-southeast-2"])
def test_default_images_resolve_offline_per_region(region):
    pytorch = training_image_uri(region, "deepspeed")
    smp = training_image_uri(region, "smp")
    lmi = lmi_image_uri(region)
    for uri in (pytorch, smp, lmi):
        assert f".dkr.ecr.{region}.amazonaws.com/" in uri
    assert "/pytorch-training:" in pytorch and "-gpu-" in pytorch
    assert "/smdistributed-modelparallel:" in smp
    assert "/djl-inference:" in lmi and "-lmi" in lmi


def test_unknown_inputs_get_a_clear_error():
    with pytest.raises(ValueError, match="set spec.image"):
        training_image_uri("xx-nowhere-1", "deepspeed")
    with pytest.raises(ValueError, match="expected deepspeed or smp"):
        training_image_uri("us-east-1", "fsdp")
