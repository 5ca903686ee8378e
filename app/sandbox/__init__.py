"""Stand-ins for the outside world: the Akool simulator, a callback receiver, and the demo that joins them."""
