"""Reference implementations the tests compare the library against (oracles, not library code)."""
