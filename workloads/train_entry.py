"""SageMaker's ``sagemaker_program``: the training toolkit runs this under torchrun with the
job's hyperparameters as ``--name value`` arguments. See README.md for the hyperparameters."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
