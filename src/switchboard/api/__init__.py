"""Inbound surfaces: each translates its protocol to the internal format and back."""
