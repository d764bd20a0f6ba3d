"""Quarantine reason codes: why an input row was not enriched."""

from __future__ import annotations

__all__ = ["REASONS", "MISSING_ID", "DUPLICATE_ID", "EMPTY_TITLE", "IMAGE_URI_NOT_ALLOWED", "IMAGE_UNREADABLE",
           "IMAGE_UNDECODABLE", "INVALID_PRICE", "INVALID_TEXT", "INVALID_VALUE", "TITLE_TOO_LONG"]

MISSING_ID = "missing_id"
DUPLICATE_ID = "duplicate_id"
EMPTY_TITLE = "empty_title"
INVALID_TEXT = "invalid_text"
TITLE_TOO_LONG = "title_too_long"
INVALID_PRICE = "invalid_price"
INVALID_VALUE = "invalid_value"
IMAGE_URI_NOT_ALLOWED = "image_uri_not_allowed"
IMAGE_UNREADABLE = "image_unreadable"
IMAGE_UNDECODABLE = "image_undecodable"

REASONS: dict[str, str] = {
    MISSING_ID: "product_id is null or blank",
    DUPLICATE_ID: "another row of the snapshot has the same product_id and a later updated_at",
    INVALID_TEXT: "a text column holds bytes that are not valid UTF-8",
    EMPTY_TITLE: "title is null, or nothing but whitespace and control characters",
    TITLE_TOO_LONG: "title longer than 4,096 characters",
    INVALID_PRICE: "price is not a number, or is NaN, infinite or negative",
    INVALID_VALUE: "a value cannot be read as its column's type (updated_at not a timestamp)",
    IMAGE_URI_NOT_ALLOWED: "image_uri has a scheme other than file, or resolves outside the allowed image roots",
    IMAGE_UNREADABLE: "the image file does not exist or cannot be read",
    IMAGE_UNDECODABLE: "the image bytes are not a decodable image (corrupt, truncated, empty, or too many pixels)",
}
