"""Build-context blobs: content-addressed files on disk and their per-namespace records."""
