# First on PYTHONPATH in the tests that prove a process needs no TensorFlow (pretrain, evaluate): importing it fails.
raise ImportError("TensorFlow is made unimportable in this test: this process must not need it")
