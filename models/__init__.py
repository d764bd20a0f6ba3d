"""Encoders and their architectures, model references and the model store, image decoding; training, heads,
attribute extraction and matching models in sub-packages; models/core/ is the lowest layer (errors, file
plumbing, kill points). No Spark imports here, and nothing from udfs/ or jobs/."""
