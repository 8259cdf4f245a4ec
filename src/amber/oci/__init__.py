"""Amber oci package."""
