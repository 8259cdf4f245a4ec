"""HTTP response and small request-body models of the template API; the request contract is ``amber.contract``."""
