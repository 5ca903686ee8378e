"""akool-relay: watches Akool video jobs and relays their outcome to the client's webhook."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("akool-relay")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
