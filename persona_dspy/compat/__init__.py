"""Every use of a dependency's private internals, in one place, each guarded by a contract test."""
