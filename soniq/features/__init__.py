"""The published package's ``soniq.features.*`` import paths, kept for its users.

The features themselves live in ``soniq.dead_letter``, ``soniq.webhooks``, ...;
these modules only re-export them.
"""
