"""Open attribute-value extraction from product titles and descriptions (no Spark here).

``load_extractor(ref)`` gives an :class:`Extractor`; ``Extractor.extract(titles, descriptions)`` returns per product
a list of ``(attribute, value, confidence, source)``. ``attributes_report(data_root)`` (in
:mod:`models.attributes.evaluate`) scores a stored extractor on the valid splits next to a dictionary baseline.
Training: ``python -m models.attributes.train``; torch loads only when a model does.
"""

from models.attributes.extractor import Extraction, Extractor, best_per_attribute, load_extractor

__all__ = ["Extraction", "Extractor", "attributes_report", "best_per_attribute", "load_extractor"]


def attributes_report(data_root, ref="default", store=None, device=None) -> str:
    """See :func:`models.attributes.evaluate.attributes_report` (imported on use: it reads the datasets)."""
    from models.attributes.evaluate import attributes_report as report

    return report(data_root, ref, store, device)
