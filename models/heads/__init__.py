"""Task heads on the product embeddings: categories, closed-vocabulary attributes, adult recognition.

Inference (:mod:`models.heads.bundle`, :mod:`models.heads.adult`, :mod:`models.heads.zero_shot`) is numpy, but for
the heads' GELU (torch's kernel, see :func:`models.heads.bundle._gelu`);
training (:mod:`models.heads.train`, :mod:`models.heads.fashion`) imports torch, scikit-learn and cleanlab.
"""
