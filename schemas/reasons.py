"""Quarantine reason codes: why an input row was not enriched."""

from __future__ import annotations

__all__ = ["REASONS", "MISSING_ID", "DUPLICATE_ID", "EMPTY_TITLE", "IMAGE_URI_NOT_ALLOWED", "IMAGE_UNREADABLE",
           "IMAGE_UNDECODABLE", "IMAGE_ASPECT_RATIO", "INVALID_PRICE", "INVALID_TEXT", "INVALID_VALUE",
           "TEXT_TOO_LONG", "TITLE_TOO_LONG"]

MISSING_ID = "missing_id"
DUPLICATE_ID = "duplicate_id"
EMPTY_TITLE = "empty_title"
INVALID_TEXT = "invalid_text"
TITLE_TOO_LONG = "title_too_long"
TEXT_TOO_LONG = "text_too_long"
INVALID_PRICE = "invalid_price"
INVALID_VALUE = "invalid_value"
IMAGE_URI_NOT_ALLOWED = "image_uri_not_allowed"
IMAGE_UNREADABLE = "image_unreadable"
IMAGE_UNDECODABLE = "image_undecodable"
IMAGE_ASPECT_RATIO = "image_aspect_ratio"

REASONS: dict[str, str] = {
    MISSING_ID: "product_id is null or blank",
    DUPLICATE_ID: "another row of the snapshot has the same product_id and a later updated_at",
    INVALID_TEXT: "a text column holds bytes that are not valid UTF-8",
    EMPTY_TITLE: "title is null, or nothing but whitespace, control or invisible characters (format characters, "
                 "combining marks alone, fillers such as U+3164 and U+2800)",
    TITLE_TOO_LONG: "title longer than 4,096 characters",
    TEXT_TOO_LONG: "another text column over its cap (detail names the column; caps in "
                   "jobs.stages.validate.MAX_TEXT_CHARS)",
    INVALID_PRICE: "price is not a number, or is NaN, infinite or negative",
    INVALID_VALUE: "a value cannot be read as its column's type (updated_at not a timestamp)",
    IMAGE_URI_NOT_ALLOWED: "image_uri has a scheme other than file, or resolves outside the allowed image roots",
    IMAGE_UNREADABLE: "the image file does not exist or cannot be read",
    IMAGE_UNDECODABLE: "the image bytes are not a decodable image (corrupt, truncated, empty, or too many pixels)",
    IMAGE_ASPECT_RATIO: "the image's long side is more than 20 times its short side (its resize for the model "
                        "would be out of all proportion)",
}
