"""Training code for the catalog encoders (e-CLIP style contrastive pre-training, ZhichunRoad multitask losses).

Inference modules (``models.encoders``, ``models.store``, the UDFs) never import this package: it pulls in
optimisers, scikit-learn for evaluation and data-preparation helpers that a nightly enrichment run does not need.
"""
