"""Amber: builds microVM templates from Dockerfiles, OCI images and declarative steps."""

__version__ = "0.1.0"
