"""Quarantine reason codes: why an input row was not enriched."""

from __future__ import annotations

__all__ = ["REASONS", "MISSING_ID", "DUPLICATE_ID", "EMPTY_TITLE", "IMAGE_URI_NOT_ALLOWED", "IMAGE_UNREADABLE",
           "IMAGE_UNDECODABLE"]

MISSING_ID = "missing_id"
DUPLICATE_ID = "duplicate_id"
EMPTY_TITLE = "empty_title"
IMAGE_URI_NOT_ALLOWED = "image_uri_not_allowed"
IMAGE_UNREADABLE = "image_unreadable"
IMAGE_UNDECODABLE = "image_undecodable"

REASONS: dict[str, str] = {
    MISSING_ID: "product_id is null or blank",
    DUPLICATE_ID: "another row of the snapshot has the same product_id and a later updated_at",
    EMPTY_TITLE: "title is null or blank after trimming",
    IMAGE_URI_NOT_ALLOWED: "image_uri has a scheme other than file, or resolves outside the allowed image roots",
    IMAGE_UNREADABLE: "the image file does not exist or cannot be read",
    IMAGE_UNDECODABLE: "the image bytes are not a decodable image (corrupt, truncated, empty, or too many pixels)",
}
