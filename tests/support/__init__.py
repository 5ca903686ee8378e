"""Helpers shared by the tests: databases, relays, receivers and processes. Test modules import only from here."""
