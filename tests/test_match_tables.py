"""The product_matches and product_clusters table definitions, created as real Delta tables."""

from __future__ import annotations

import pytest
from deltalake import DeltaTable

from schemas.tables import PRODUCT_CLUSTERS, PRODUCT_MATCHES, TABLES


@pytest.mark.parametrize("spec", [PRODUCT_MATCHES, PRODUCT_CLUSTERS], ids=lambda s: s.name)
def test_spec_is_registered_documented_and_keyed(spec):
    assert TABLES[spec.name] is spec
    assert all(c.doc.strip() for c in spec.columns)
    assert set(spec.keys) <= set(spec.column_names)
    assert {"run_id", "updated_at"} <= set(spec.column_names)


@pytest.mark.spark
def test_tables_are_created_with_their_schema(lake):
    for spec in (PRODUCT_MATCHES, PRODUCT_CLUSTERS):
        lake.ensure(spec)
        assert DeltaTable(str(lake.path(spec))).schema().to_arrow().names == spec.column_names
        assert lake.read(spec).schema.fieldNames() == spec.column_names
