"""Build-context blob bytes: content-addressed files on disk, verified on upload (``store``). Their
per-namespace records are ``amber.store.blobs``; the two do not import each other."""
