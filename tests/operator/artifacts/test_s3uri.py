import pytest

from llama_operator.artifacts import s3uri


def test_split_gives_bucket_and_key():
    assert s3uri.split("s3://bucket/models/tiny/") == ("bucket", "models/tiny/")
    assert s3uri.split("s3://bucket") == ("bucket", "")


@pytest.mark.parametrize("bad", ["bucket/key", "https://bucket/key", "s3:///key", "", None])
def test_anything_else_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match="s3://bucket/prefix/"):
        s3uri.split(bad)
