"""Encoders, model references and image decoding; no Spark imports here."""
